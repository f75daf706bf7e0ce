"""`rcsegnext train`: train RCSegNeXt on a raw nnU-Net-layout dataset with the paper's recipe (Section 3.1)."""
from __future__ import annotations

import argparse

from RCSegNeXtCore.training.finetune import FINETUNE_EPOCHS, FINETUNE_LR

HELP = "train on a raw dataset (plans, preprocesses, 5-fold cross-validation, resume, multi-GPU)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("dataset", help="raw dataset folder (imagesTr/, labelsTr/, dataset.json)")
    parser.add_argument("-o", "--output", required=True, help="run folder = model folder (plans.json, fold_K/)")
    parser.add_argument("--fold", default="0", help="fold 0..N-1, or 'all' (every case; pseudo-Dice on the training cases); default 0")
    parser.add_argument("--folds", nargs="+", default=None, help="several folds in turn, e.g. --folds 0 1 2 3 4")
    parser.add_argument("--num-folds", type=int, default=5, help="folds of a new split (default 5)")
    parser.add_argument("--splits", default=None, help="an existing nnU-Net splits_final.json to use")
    parser.add_argument("--plans", default=None, help="plans.json to use instead of planning from the dataset")
    parser.add_argument("--preprocessed", default=None,
                        help="preprocess cache folder (default RUN/preprocessed; reused when present)")
    parser.add_argument("--target-spacing", type=float, nargs=3, default=None, metavar=("Z", "Y", "X"),
                        help="resample to this spacing instead of the dataset's median")
    tune = parser.add_argument_group("fine-tuning (docs/training.md)")
    tune.add_argument("--init-from", default=None, metavar="MODEL",
                      help="start from this model folder's weights and plan (unchanged); shorter default schedule")
    tune.add_argument("--init-fold", default=None, metavar="K",
                      help="its fold K or 'all' (default: its only fold, else 'all' if present, else 0)")
    recipe = parser.add_argument_group("recipe (defaults: the paper's)")
    recipe.add_argument("--epochs", type=int, default=None,
                        help=f"default 100 ({FINETUNE_EPOCHS} with --init-from)")
    recipe.add_argument("--iterations-per-epoch", type=int, default=250, help="default 250")
    recipe.add_argument("--val-iterations", type=int, default=50, help="validation patches per epoch (default 50)")
    recipe.add_argument("--batch-size", type=int, default=None, help="default: the plan's (2)")
    recipe.add_argument("--patch-size", type=int, nargs=3, default=None, metavar=("Z", "Y", "X"),
                        help="default: the plan's ([16, 320, 320] for Dataset A)")
    recipe.add_argument("--lr", type=float, default=None,
                        help=f"initial learning rate (poly decay); default 0.01 ({FINETUNE_LR:g} with --init-from)")
    recipe.add_argument("--seed", type=int, default=0)
    recipe.add_argument("--deterministic", action="store_true", help="deterministic algorithms (bit-identical resume)")
    recipe.add_argument("--no-augmentation", action="store_true", help="train without data augmentation")
    recipe.add_argument("--no-amp", action="store_true", help="no mixed precision on CUDA")
    arch = parser.add_argument_group("network (ablations of Table 3)")
    arch.add_argument("--base-channels", type=int, default=None, help="width of the first stage (paper: 32)")
    arch.add_argument("--scale", type=int, default=None, help="Res2Net/IsoNeXt scale (paper: 4)")
    arch.add_argument("--expansion", type=int, default=None, help="block expansion ratio (paper: 2)")
    arch.add_argument("--aniso-block", default=None, help="block of the anisotropic stages (default aninext)")
    arch.add_argument("--iso-block", default=None, help="block of the isotropic stages (default isonext)")
    arch.add_argument("--deep-supervision", action="store_true", help="deep supervision (off in the paper)")
    run = parser.add_argument_group("running")
    run.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N | mps (default auto)")
    run.add_argument("--gpus", type=int, default=1,
                     help="data-parallel processes (DDP); with --device cpu, that many gloo CPU processes")
    run.add_argument("--num-workers", type=int, default=1, help="threads preparing patches / processes "
                     "preprocessing (default 1)")
    run.add_argument("--threads", type=int, default=None,
                     help="CPU threads per process (default: the idle cores, by the load average)")
    run.add_argument("--resume", action="store_true", help="continue from fold_K/checkpoint_latest.pt")
    run.add_argument("--no-validation", action="store_true",
                     help="skip predicting and evaluating the held-out cases after training")
    run.add_argument("--skip-memory-check", action="store_true", help="do not estimate CPU memory first")
    run.add_argument("--progress-json", action="store_true",
                     help="print one JSON progress object per line on stdout, everything else on stderr (for GUIs)")


def config_from_args(args: argparse.Namespace):
    """The TrainingConfig this command line asks for (every option lands in one field)."""
    from RCSegNeXtCore.training.config import TrainingConfig
    from RCSegNeXtCore.training.splits import parse_fold
    # an option not given takes the recipe's default, or the shorter fine-tuning one with --init-from
    fine_tune = args.init_from is not None
    default = TrainingConfig()
    epochs = args.epochs if args.epochs is not None else FINETUNE_EPOCHS if fine_tune else default.epochs
    lr = args.lr if args.lr is not None else FINETUNE_LR if fine_tune else default.lr
    return TrainingConfig(
        dataset=args.dataset, output=args.output, folds=[parse_fold(f) for f in args.folds or [args.fold]],
        num_folds=args.num_folds,
        splits=args.splits, plans_file=args.plans, preprocessed=args.preprocessed, init_from=args.init_from,
        init_fold=None if args.init_fold is None else parse_fold(args.init_fold),
        target_spacing=args.target_spacing, batch_size=args.batch_size, patch_size=args.patch_size,
        base_channels=args.base_channels, scale=args.scale, expansion=args.expansion, aniso_block=args.aniso_block,
        iso_block=args.iso_block,
        epochs=epochs, iterations_per_epoch=args.iterations_per_epoch, val_iterations=args.val_iterations,
        lr=lr, seed=args.seed, deterministic=args.deterministic, augment=not args.no_augmentation,
        amp=not args.no_amp, deep_supervision=args.deep_supervision,
        device=args.device, gpus=args.gpus, num_workers=args.num_workers, threads=args.threads, resume=args.resume,
        validate=not args.no_validation, check_memory=not args.skip_memory_check, progress_json=args.progress_json)


def run(args: argparse.Namespace) -> int:
    from RCSegNeXtCore.training.events import TrainingEvents, json_stdout
    if not args.progress_json:
        from RCSegNeXtCore.training.pipeline import train
        train(config_from_args(args))
        return 0
    with json_stdout() as stream:                          # stdout: the JSON lines only
        events = TrainingEvents(stream)
        try:
            from RCSegNeXtCore.training.pipeline import train
            train(config_from_args(args), events=events)
        except BaseException as exc:                       # the GUI learns why; cli.py then sets the exit status
            events.error(exc)
            raise
    return 0
