"""Foreground-oversampling parity: which samples of a batch are forced onto foreground, ours (PatchSampler with the
trainer's rank split) against nnU-Net v2.1.2's own code: `nnUNetDataLoaderBase._oversample_last_XX_percent` per batch
position and `nnUNetTrainer._set_batch_size_and_oversample` per DDP rank (driven with a stand-in for
torch.distributed). Runs in the parity environment (environment.py):

    python -m benchmarks.parity.sampler --json OUT.json

Every global batch 1..16 and every world size up to it: the per-rank batch sizes and forced positions must be equal.
nnU-Net splits ceil(B / world) per rank and can leave a rank without samples (4 over 3: 2, 2, 0; its training would
fail there); those cases are listed, ours spreads the batch evenly instead, and the forced positions are still the
global rule's.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import List, Optional

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from RCSegNeXtCore.training.sampler import (PatchSampler, TrainingCase, class_locations_from,  # noqa: E402
                                            forced_positions, global_batch_size, rank_slice)

OVERSAMPLE = 0.33


def nnunet_rank(global_batch: int, world: int, rank: int, oversample: float = OVERSAMPLE) -> List[bool]:
    """nnU-Net 2.1.2: the rank's batch size and oversample percent from the trainer, then the data loader's rule."""
    import nnunetv2.training.nnUNetTrainer.nnUNetTrainer as trainer_module
    from nnunetv2.training.dataloading.base_data_loader import nnUNetDataLoaderBase
    saved = trainer_module.dist
    trainer_module.dist = SimpleNamespace(get_world_size=lambda: world, get_rank=lambda: rank)
    try:
        fake = SimpleNamespace(is_ddp=world > 1, configuration_manager=SimpleNamespace(batch_size=global_batch),
                               oversample_foreground_percent=oversample)
        with contextlib.redirect_stdout(io.StringIO()):       # it prints each rank's values
            trainer_module.nnUNetTrainer._set_batch_size_and_oversample(fake)
    finally:
        trainer_module.dist = saved
    loader = SimpleNamespace(batch_size=int(fake.batch_size),
                             oversample_foreground_percent=fake.oversample_foreground_percent)
    return [bool(nnUNetDataLoaderBase._oversample_last_XX_percent(loader, i)) for i in range(loader.batch_size)]


def _case() -> TrainingCase:
    label = np.zeros((4, 16, 16), np.uint8)
    label[2, 8, 8] = 1
    return TrainingCase("probe", np.zeros((1, 4, 16, 16), np.float32), label, class_locations_from(None, label))


def ours_rank(global_batch: int, world: int, rank: int, oversample: float = OVERSAMPLE, batches: int = 3):
    """The forced flags our PatchSampler returns for this rank, as the trainer builds it (every batch the same)."""
    offset, size = rank_slice(global_batch, rank, world)
    sampler = PatchSampler([_case()], [4, 8, 8], oversample_foreground=oversample, seed=rank,
                           global_batch=global_batch_size(global_batch, world), batch_offset=offset)
    flags = [sampler.batch(size)[2].tolist() for _ in range(batches)]
    assert all(f == flags[0] for f in flags), "forced positions changed between batches"
    return [bool(v) for v in flags[0]]


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max-batch", type=int, default=16)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    positions, ranks, empty = [], [], []
    mismatches = 0
    for batch in range(1, args.max_batch + 1):
        theirs = nnunet_rank(batch, 1, 0)
        mine = ours_rank(batch, 1, 0)
        rule = forced_positions(batch, OVERSAMPLE)
        ok = theirs == mine == rule
        mismatches += not ok
        positions.append({"batch": batch, "nnunet": theirs, "ours": mine, "equal": ok})
        for world in range(2, batch + 1):
            theirs_ranks = [nnunet_rank(batch, world, r) for r in range(world)]
            mine_ranks = [ours_rank(batch, world, r) for r in range(world)]
            if any(len(f) == 0 for f in theirs_ranks):        # nnU-Net leaves a rank without samples
                ok = sum(mine_ranks, []) == rule and all(mine_ranks)
                empty.append({"batch": batch, "world": world, "nnunet": theirs_ranks, "ours": mine_ranks,
                              "ours_is_the_global_rule": ok})
            else:
                ok = theirs_ranks == mine_ranks
                ranks.append({"batch": batch, "world": world, "equal": ok,
                              "sizes": [len(f) for f in mine_ranks], "forced": mine_ranks})
            mismatches += not ok
    print("| global batch | forced positions (nnU-Net 2.1.2 = ours) |")
    print("|---:|---|")
    for row in positions:
        marks = "".join("F" if f else "." for f in row["ours"])
        print(f"| {row['batch']} | {marks}{'' if row['equal'] else ' **differs**'} |")
    print(f"\nDDP: {len(ranks)} (global batch, world size) pairs with nnU-Net's split valid, "
          f"{sum(not r['equal'] for r in ranks)} differ; e.g. batch 2 on 2 ranks: "
          + str(next(r["forced"] for r in ranks if r["batch"] == 2 and r["world"] == 2)))
    print(f"{len(empty)} pairs where nnU-Net leaves a rank without samples (ours: spread evenly, the global rule: "
          f"{all(e['ours_is_the_global_rule'] for e in empty)}), e.g. "
          + (f"batch {empty[0]['batch']} on {empty[0]['world']}: nnU-Net {[len(f) for f in empty[0]['nnunet']]}, "
             f"ours {[len(f) for f in empty[0]['ours']]}" if empty else "none"))
    print(f"\nsampler rule mismatches: {mismatches}")
    result = {"oversample_foreground": OVERSAMPLE, "sampler_rule_mismatches": mismatches,
              "batch_position": positions, "ddp": ranks, "nnunet_empty_rank": empty}
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
