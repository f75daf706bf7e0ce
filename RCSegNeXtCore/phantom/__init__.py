"""Synthetic sagittal T2 pelvis phantom: the embedded default dataset for the demo and the tests.

Each case imitates a sagittal T2 rectal MRI at the paper's Dataset A geometry (MIDL 2025: spacing ~[4.0, 0.875,
0.875] mm, 18-24 slices of 320-512 px): sacrum and coccyx, a curved rectum with wall and lumen along them, an
eccentric tumour (absent in ~10 % of cases), mesorectum, bladder, pubis, prostate or uterus, bowel loops, fat and
muscle; then tissue texture, partial-volume blur across the thick left-right axis, a smooth coil bias field,
slice-to-slice gain changes, occasional motion ghosts and Rician noise. Labels: 0 background, 1 rectum, 2 tumour.

Sizes: `size="full"` (the paper's geometry, ~0.5 s per case) or `size="small"` (16 x 96 x 96 voxels at
~[5.0, 2.5, 2.5] mm, ~30 ms per case, for fast tests and the CPU demo). `shape`/`spacing` override either.
The surroundings are painted at half the in-plane resolution and upsampled; the rectum region at full resolution.

Modules: case (one case in memory), dataset (a dataset on disk), anatomy (random anatomy and tissue signals), render
and rectum (painting it on the voxel grid), preview (a PNG of the cases).
"""
from RCSegNeXtCore.phantom.case import make_phantom_case
from RCSegNeXtCore.phantom.dataset import case_ids, make_phantom_dataset

__all__ = ["case_ids", "make_phantom_case", "make_phantom_dataset"]
