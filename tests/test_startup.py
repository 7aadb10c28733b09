"""Start-up: a command imports what it runs, not every modality's libraries.

Each check runs the command in a fresh interpreter and reads what it imported. Lightning itself imports
torchmetrics, which imports torchvision and scipy whenever they are installed; so a library counts against the
suite only when an alignsuite module imports it, or when the command loads it and Lightning alone does not.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# The libraries of the optional extras (diffusion, speech, vision, eval): a language-only install has none.
EXTRAS_LIBRARIES = ["diffusers", "open_clip", "timm", "torchvision", "soundfile", "scipy"]

PROBE = r"""
import builtins, json, runpy, sys

watched, argv, out = set(json.loads(sys.argv[1])), json.loads(sys.argv[2]), sys.argv[3]
direct = set()
real_import = builtins.__import__


def watching(name, globals=None, locals=None, fromlist=(), level=0):
    importer = (globals or {}).get("__name__") or ""
    if level == 0 and importer.startswith("alignsuite") and name.partition(".")[0] in watched:
        direct.add(f"{importer} imports {name}")
    return real_import(name, globals, locals, fromlist, level)


builtins.__import__ = watching
if argv is None:
    import lightning.pytorch.cli  # noqa: F401  (what Lightning alone loads)
else:
    sys.argv = ["alignsuite", *argv]
    try:
        runpy.run_module("alignsuite", run_name="__main__", alter_sys=True)
    except SystemExit as stop:
        assert stop.code in (0, None), f"exit status {stop.code}"
with open(out, "w") as f:
    json.dump({"direct": sorted(direct), "loaded": sorted(n for n in watched if n in sys.modules)}, f)
"""


def imported(tmp_path, argv: list[str] | None) -> dict:
    out = tmp_path / "imported.json"
    env = {**os.environ, "PYTHONPATH": REPO + os.pathsep + os.environ.get("PYTHONPATH", "")}
    run = subprocess.run(
        [sys.executable, "-c", PROBE, json.dumps(EXTRAS_LIBRARIES), json.dumps(argv), str(out)],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    return json.loads(out.read_text())


@pytest.fixture(scope="module")
def lightning_loads(tmp_path_factory) -> set[str]:
    return set(imported(tmp_path_factory.mktemp("lightning"), None)["loaded"])


@pytest.mark.parametrize("argv", [
    ["--help"],
    ["fit", "--config", "recipes/toy/llm_dpo.yaml", "--print_config"],
], ids=["help", "print_config"])
def test_a_language_command_imports_no_extras_library(tmp_path, lightning_loads, argv):
    found = imported(tmp_path, argv)
    assert found["direct"] == [], "alignsuite modules import optional libraries at start-up:\n" + "\n".join(
        found["direct"])
    beyond = sorted(set(found["loaded"]) - lightning_loads)
    assert beyond == [], f"{' '.join(argv)} loads {beyond}, which Lightning alone does not"



SHORTCUTS = r"""
import contextlib, io, json, sys
import yaml
from alignsuite.cli import main

found = {}
for backbone in json.loads(sys.argv[1]):
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed), contextlib.suppress(SystemExit):
        main(["fit", "--config", "recipes/toy/llm_dpo.yaml", "--model.backbone", backbone, "--model.objective", "IPO",
              "--trainer.callbacks+", "SpeechSamples", "--print_config"])
    config = yaml.safe_load(printed.getvalue())
    found[backbone] = [config["model"]["init_args"][part]["class_path"] for part in ("backbone", "objective")]
    found[backbone].append(config["trainer"]["callbacks"][-1]["class_path"])
print(json.dumps(found))
"""


def test_class_names_resolve_in_a_fresh_process():
    """``--model.backbone CausalLM``: jsonargparse finds a class by its name only among the classes already imported,
    and the packages now import theirs on first use; the command line imports them before it parses."""
    backbones = ["CausalLM", "SpeechTokenLM", "FlowMatchingTTS", "TextToImage", "VisionLanguage"]
    env = {**os.environ, "PYTHONPATH": REPO + os.pathsep + os.environ.get("PYTHONPATH", "")}
    run = subprocess.run([sys.executable, "-c", SHORTCUTS, json.dumps(backbones)], cwd=REPO, env=env,
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    assert json.loads(run.stdout.splitlines()[-1]) == {
        name: [f"alignsuite.backbones.{name}", "alignsuite.objectives.IPO", "alignsuite.callbacks.SpeechSamples"]
        for name in backbones
    }

# ---------------------------------------------------------------- a missing extra is named
def missing(monkeypatch, library: str, *stale: str) -> None:
    """Make ``library`` look uninstalled (``import`` then raises ModuleNotFoundError), and forget the alignsuite
    modules in ``stale`` that an earlier test imported with it, so they are imported again."""
    monkeypatch.setitem(sys.modules, library, None)
    for name in [name for name in sys.modules if name.startswith(library + ".")]:  # found before their package
        monkeypatch.delitem(sys.modules, name)
    for name in stale:
        package, _, attribute = name.rpartition(".")
        monkeypatch.delitem(sys.modules, name, raising=False)
        monkeypatch.delattr(sys.modules[package], attribute, raising=False)


def pip_hint(extra: str) -> str:
    return rf'which is not installed: pip install "alignsuite\[{extra}\]"'


def test_audio_without_the_speech_extra_names_it(monkeypatch, tmp_path):
    import torch

    from alignsuite.data.audio import resample, write_wav

    missing(monkeypatch, "soundfile")
    with pytest.raises(ModuleNotFoundError, match="reading and writing audio needs soundfile, " + pip_hint("speech")):
        write_wav(tmp_path / "a.wav", torch.zeros(16), 16000)
    missing(monkeypatch, "scipy")
    with pytest.raises(ModuleNotFoundError, match="resampling audio needs scipy, " + pip_hint("speech")):
        resample(torch.zeros(16), 16000, 8000)


def test_the_flow_matching_tts_backbone_without_diffusers_names_the_speech_extra(monkeypatch):
    from alignsuite.backbones import FlowMatchingTTS

    missing(monkeypatch, "diffusers", "alignsuite.backbones.flow_tts_model")
    with pytest.raises(ModuleNotFoundError, match=r"FlowMatchingTTS\) needs diffusers, " + pip_hint("speech")):
        FlowMatchingTTS("toy:tts_flow").configure()  # its noise schedule is diffusers', built with the backbone


def test_the_text_to_image_backbone_without_diffusers_names_the_diffusion_extra(monkeypatch):
    from alignsuite.backbones import TextToImage

    missing(monkeypatch, "diffusers")
    backbone = TextToImage("toy:diffusion")
    with pytest.raises(ModuleNotFoundError, match=r"TextToImage\) needs diffusers, " + pip_hint("diffusion")):
        backbone.configure()


def test_the_open_clip_scorers_without_open_clip_name_the_eval_extra(monkeypatch, tmp_path):
    from alignsuite.evaluation import HPSv2

    missing(monkeypatch, "open_clip")
    (tmp_path / "hps.pt").write_bytes(b"")  # never read: open_clip is needed first
    with pytest.raises(ModuleNotFoundError, match=r"HPSv2, Aesthetic\) needs open_clip, " + pip_hint("eval")):
        HPSv2(str(tmp_path / "hps.pt"), device="cpu").load()


def test_an_import_error_inside_an_installed_library_is_not_called_a_missing_extra(monkeypatch):
    """Only the extra's own libraries missing is a missing extra: a library that is there but fails to import one
    of its own dependencies keeps its error."""
    from alignsuite.lazy import optional

    monkeypatch.setitem(sys.modules, "not_a_library_of_alignsuite", None)
    with pytest.raises(ModuleNotFoundError, match="not_a_library_of_alignsuite") as raised:
        with optional("speech", "this"):
            import not_a_library_of_alignsuite  # noqa: F401
    assert "pip install" not in str(raised.value)


def test_the_command_line_gives_a_missing_extra_in_one_line(monkeypatch, capsys):
    """Raised while jsonargparse builds the backbone, the error arrived inside a Union error after a long traceback."""
    from alignsuite.cli import main

    missing(monkeypatch, "diffusers", "alignsuite.backbones.flow_tts_model")
    with pytest.raises(SystemExit) as stop:
        main(["fit", "--config", os.path.join(REPO, "recipes/toy/tts_flow_dpo.yaml"), "--trainer.max_steps", "1"])
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert err.splitlines()[-1] == ("alignsuite: error: the flow-matching TTS backbone (FlowMatchingTTS) needs diffusers, which is"
                                    ' not installed: pip install "alignsuite[speech]"'), err
    assert "Traceback" not in err and "Union" not in err
