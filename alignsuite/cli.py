"""``python -m alignsuite fit|validate|test|predict|export --config recipe.yaml``."""

from __future__ import annotations

import sys

from lightning.pytorch.callbacks import ModelCheckpoint, ProgressBar, RichProgressBar
from lightning.pytorch.cli import LightningCLI

from alignsuite.callbacks import AtomicCheckpointIO, ExportPretrained
from alignsuite.data import PreferenceDataModule
from alignsuite.module import PreferenceModule

TRAINER_DEFAULTS = {
    "logger": {"class_path": "lightning.pytorch.loggers.CSVLogger", "init_args": {"save_dir": "runs"}},
    "log_every_n_steps": 10,
}


class AlignCLI(LightningCLI):
    """LightningCLI over :class:`PreferenceModule` (or a subclass) and any LightningDataModule.

    Always present: ``checkpoint`` (a ModelCheckpoint that keeps ``last.ckpt``, written atomically) and
    ``export`` (``save_pretrained`` folder of the policy at the end of fit).
    """

    def __init__(self, args=None, run: bool = True, **kwargs) -> None:
        super().__init__(
            PreferenceModule,
            PreferenceDataModule,
            subclass_mode_model=True,
            subclass_mode_data=True,
            trainer_defaults=TRAINER_DEFAULTS,
            save_config_kwargs={"overwrite": True},
            parser_kwargs={"default_env": True},
            args=args,
            run=run,
            **kwargs,
        )

    def add_arguments_to_parser(self, parser) -> None:
        parser.add_lightning_class_args(ModelCheckpoint, "checkpoint")
        parser.set_defaults({"checkpoint.save_last": True, "checkpoint.save_top_k": 0})
        parser.add_lightning_class_args(ExportPretrained, "export")

    def _instantiate_trainer(self, config: dict, callbacks: list):
        given = list(config.get("callbacks") or []) + callbacks
        if config.get("enable_progress_bar", True) is not False and not any(isinstance(c, ProgressBar) for c in given):
            callbacks.append(RichProgressBar())
        plugins = config.get("plugins")
        plugins = list(plugins) if isinstance(plugins, list) else ([plugins] if plugins else [])
        if not any(hasattr(p, "save_checkpoint") for p in plugins):
            config["plugins"] = plugins + [AtomicCheckpointIO()]
        return super()._instantiate_trainer(config, callbacks)


class ExportCLI(AlignCLI):
    def add_arguments_to_parser(self, parser) -> None:
        super().add_arguments_to_parser(parser)
        parser.add_argument("--ckpt_path", type=str, help="the Lightning checkpoint to export")


def export(argv: list[str]) -> None:
    """``export --config recipe.yaml --ckpt_path last.ckpt --export.dirpath out``: a checkpoint to a folder."""
    import torch

    cli = ExportCLI(args=argv, run=False)
    ckpt_path = cli.config.get("ckpt_path")
    if not ckpt_path:
        raise SystemExit("export: give --ckpt_path, the Lightning checkpoint to export")
    model = cli.model
    model.configure_model()
    checkpoint = torch.load(ckpt_path, map_location="cpu", weights_only=False)
    model.on_load_checkpoint(checkpoint)
    model.load_state_dict(checkpoint["state_dict"])
    callback = next(c for c in cli.trainer.callbacks if isinstance(c, ExportPretrained))
    path = callback.resolve_dir(cli.trainer)
    model.backbone.save_pretrained(path, merge_adapters=callback.merge_adapters)
    print(f"exported {ckpt_path} to {path}")


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["export"]:
        return export(argv[1:])
    AlignCLI(args=argv)
