"""RCSegNeXtCore: the pure-Python core of RCSegNeXt (network, planning, data, training, inference, evaluation).

No Slicer, Qt or VTK import anywhere in this package: the Slicer module and the CLI are thin layers over it.
"""
__version__ = "0.1.0"
