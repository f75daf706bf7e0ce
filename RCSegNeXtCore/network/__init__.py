"""RCSegNeXt network: blocks (blocks.py), the U-shaped network built from a plan (rcsegnext.py), parameter counts
(counting.py), the official-checkpoint importer (official.py) and the per-stage summary (summary.py)."""
from RCSegNeXtCore.network.blocks import (BLOCKS, AniNeXtBlock, ConvBlock, IsoNeXtBlock, Res2NetBlock,
                                          Res2NeXtBlock, ScaleAwareIntegration, block_class, make_block)
from RCSegNeXtCore.network.counting import count_paper_parameters, count_parameters, unused_official_parameters
from RCSegNeXtCore.network.rcsegnext import RCSegNeXt, Stage, StageSpec, build_network, stage_specs

__all__ = ["BLOCKS", "AniNeXtBlock", "ConvBlock", "IsoNeXtBlock", "RCSegNeXt", "Res2NetBlock", "Res2NeXtBlock",
           "ScaleAwareIntegration", "Stage", "StageSpec", "block_class", "build_network", "count_paper_parameters",
           "count_parameters", "make_block", "stage_specs", "unused_official_parameters"]
