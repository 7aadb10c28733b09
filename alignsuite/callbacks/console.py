"""What a run prints: the progress bar and model summary the command line adds, and the libraries' own switches
for the lines a run does not need (device lines of hardware the machine lacks, weight loading and saving bars,
``datasets``' bars over an in-memory table, a logging-interval hint for small data). Warnings stay."""

from __future__ import annotations

import logging
import warnings

from lightning.pytorch.callbacks import RichModelSummary, RichProgressBar
from lightning.pytorch.utilities.warnings import PossibleUserWarning

# Lightning's device lines (rank_zero_info) for hardware that is absent and unused: nothing to act on.
ABSENT_DEVICES = ("GPU available: False, used: False", "TPU available: False", "HPU available: False")


def _drop_absent_devices(record: logging.LogRecord) -> bool:
    message = str(record.msg)
    # Lightning also says it keeps the command line's own summary (RunSummary) rather than adding its default.
    ours = message.startswith("Trainer already configured with model summary") and "RunSummary" in message
    return not (message.startswith(ABSENT_DEVICES) or ours)


def quiet_libraries() -> None:
    """Turn off, with each library's own switch, what every run printed and no user acts on; once per process,
    when a command is about to run (not for ``--help``, which imports none of these)."""
    import datasets
    import huggingface_hub.utils as hub
    from transformers.utils import logging as transformers_logging

    rank_zero = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    if _drop_absent_devices not in rank_zero.filters:
        rank_zero.addFilter(_drop_absent_devices)
    # Fewer batches than log_every_n_steps: training metrics are still logged every log_every_n_steps steps
    # (over epochs) and when the run stops; Lightning's hint about it printed on every small toy run.
    warnings.filterwarnings("ignore", message=r"The number of training batches \(\d+\) is smaller than the logging"
                            r" interval", category=PossibleUserWarning)
    # No validation data is a setup the data module allows (its val_dataloader is an empty list, which Lightning
    # skips), not a mistake to warn about.
    warnings.filterwarnings("ignore", message=r"Total length of `list` across ranks is zero")
    # transformers' bars over loading and writing a model's weights; its switch also turns the hub's download bars
    # off, which stay as they were (a download of many gigabytes deserves its bar).
    downloads_quiet = hub.are_progress_bars_disabled()
    transformers_logging.disable_progress_bar()
    if not downloads_quiet:
        hub.enable_progress_bars()
    # datasets' bars over tables it already holds ("Flattening the indices", map and filter over a local file).
    datasets.disable_progress_bars()


class RunProgressBar(RichProgressBar):
    """Lightning's rich progress bar without the logger's version number (``v_num``): the run folder already says
    it, and a CSV logger's version read as ``v_num: 0.000``."""

    def get_metrics(self, trainer, pl_module) -> dict:
        metrics = super().get_metrics(trainer, pl_module)
        metrics.pop("v_num", None)
        return metrics

    def _get_train_description(self, current_epoch: int) -> str:
        # A run bounded by max_steps has max_epochs -1, which Lightning's bar showed as "Epoch 1/-2".
        if self.trainer.max_epochs is not None and self.trainer.max_epochs < 0:
            return f"{f'Epoch {current_epoch}':{len(self.validation_description)}}"
        return super()._get_train_description(current_epoch)


class RunSummary(RichModelSummary):
    """Lightning's rich model summary, without the FLOPs column and total when nothing counted them: Lightning
    counts FLOPs only by running ``example_input_array``, which a preference module has none of, so it printed
    "Total FLOPs: 0"."""

    @staticmethod
    def summarize(summary_data, total_parameters, trainable_parameters, model_size, total_training_modes,
                  total_flops, **summarize_kwargs) -> None:
        if total_flops:
            return RichModelSummary.summarize(summary_data, total_parameters, trainable_parameters, model_size,
                                              total_training_modes, total_flops, **summarize_kwargs)
        from lightning.pytorch.utilities.model_summary import get_formatted_model_size, get_human_readable_count
        from rich import get_console
        from rich.table import Table

        columns = [(name, values) for name, values in summary_data if name != "FLOPs"]
        table = Table(header_style=summarize_kwargs.get("header_style", "bold magenta"))
        for name, _ in columns:
            table.add_column(name, style="dim" if name == " " else None,
                             justify="right" if name not in ("Name", "Type", "Mode") else "left")
        for row in zip(*(values for _, values in columns)):
            table.add_row(*row)
        console = get_console()
        console.print(table)
        totals = Table.grid(expand=True)
        totals.add_column()
        for label, value in (
            ("Trainable params", get_human_readable_count(int(trainable_parameters))),
            ("Non-trainable params", get_human_readable_count(int(total_parameters - trainable_parameters))),
            ("Total params", get_human_readable_count(int(total_parameters))),
            ("Total estimated model params size (MB)", get_formatted_model_size(model_size)),
            ("Modules in train mode", total_training_modes["train"]),
            ("Modules in eval mode", total_training_modes["eval"]),
        ):
            totals.add_row(f"[bold]{label}[/]: {value}")
        console.print(totals)
