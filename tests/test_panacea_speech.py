"""Panacea on a speech-token LM (`PanaceaSpeechLM`): the same mixin as `PanaceaLM` and `PanaceaVLM` in front of
`SpeechTokenLM`: the base bit for bit at the start, the reference as the adapter off, the preference length read
from the data's dimensions, and the export (with its speech-token settings) read back, refused by a plain
`SpeechTokenLM` and read as Panacea by evaluate, on the two-reward speech toy world."""

from __future__ import annotations

import json
import os
from types import SimpleNamespace

import pytest
import torch

from alignsuite.backbones import PanaceaSpec, PanaceaSpeechLM, SpeechTokenLM
from alignsuite.backbones.svd_lora import adapters
from alignsuite.module import PreferenceModule
from alignsuite.objectives import DPO
from alignsuite.toy import get_world

WORLD = get_world("tts_pace")


def batch() -> dict:
    layout = WORLD.layout()
    rows, _ = layout.build([("toy", WORLD.make_pairs(4, seed=3), None)])
    return layout.collate(list(rows))


def scores(backbone) -> torch.Tensor:
    """The policy's chosen and rejected scores of the world's rows."""
    module = PreferenceModule(backbone, DPO(beta=0.1))
    module.configure_model()
    with torch.no_grad():
        s = module.compute_scores(batch())
    return torch.cat([s.chosen, s.rejected])


def panacea(path: str = "toy:tts", **kw) -> PanaceaSpeechLM:
    return PanaceaSpeechLM(path, max_length=96, **{"panacea": PanaceaSpec(r=2, preference_rank=2, preference_dim=2),
                                                   **WORLD.backbone_args, **kw})


def perturb(backbone) -> None:
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for a in adapters(backbone.policy).values():
            a.U.normal_(0, 0.2, generator=g)


def test_starts_as_the_base_bit_for_bit_and_the_reference_is_the_adapter_off():
    bb, base = panacea(), SpeechTokenLM("toy:tts", max_length=96, **WORLD.backbone_args)
    bb.configure()
    want = scores(base)
    assert torch.equal(scores(bb), want)
    assert {n.rsplit(".", 1)[-1] for n, p in bb.policy.named_parameters() if p.requires_grad} == {"U", "V", "sigma",
                                                                                                  "scale"}
    perturb(bb)
    bb.set_preference([1.0, 0.0])
    first = scores(bb)
    assert not torch.allclose(first, want, atol=1e-3)
    with bb.adapters_disabled():
        assert torch.equal(scores(bb), want)
    bb.set_preference([0.0, 1.0])
    assert not torch.allclose(scores(bb), first, atol=1e-4)


def test_the_preference_length_comes_from_the_worlds_dimensions():
    bb = panacea(panacea=PanaceaSpec(r=2))
    bb.on_setup(SimpleNamespace(layout=WORLD.layout()))
    assert bb.preference_dim == 2 == len(WORLD.dimensions)
    wrong = panacea(panacea=PanaceaSpec(r=2, preference_dim=3))
    with pytest.raises(ValueError, match="backbone.panacea.preference_dim is 3 .* 2 preference dimensions"):
        wrong.on_setup(SimpleNamespace(layout=WORLD.layout()))


def test_export_keeps_the_speech_settings_and_is_read_as_panacea_by_evaluate(tmp_path):
    from alignsuite.evaluation.run import aligned_backbone

    bb = panacea()
    bb.configure()
    perturb(bb)
    bb.set_preference([0.3, 0.7])
    want = scores(bb)
    bb.save_pretrained(str(tmp_path))
    settings = json.loads((tmp_path / "speech_tokens.json").read_text())
    assert settings["codebook_size"] == WORLD.backbone_args["codebook_size"]
    assert os.path.isfile(tmp_path / "panacea.json") and os.path.isfile(tmp_path / "panacea_adapter.safetensors")
    back = panacea(str(tmp_path), panacea=None)
    back.configure()
    back.set_preference([0.3, 0.7])
    assert back.panacea.r == 2 and torch.equal(scores(back), want)
    with pytest.raises(ValueError, match=r"is a Panacea export.*load it with alignsuite.backbones.PanaceaLM"):
        SpeechTokenLM(str(tmp_path), max_length=96, **WORLD.backbone_args).configure()
    read = aligned_backbone(SpeechTokenLM("toy:tts", max_length=96, **WORLD.backbone_args), str(tmp_path))
    assert type(read) is PanaceaSpeechLM and read.max_length == 96 and read.preference_dim == 2
    read.set_preference([0.3, 0.7])
    assert torch.equal(scores(read), want)
