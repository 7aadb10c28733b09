"""Panacea on a speech-token LM (`PanaceaSpeechLM`): the same mixin as `PanaceaLM` and `PanaceaVLM` in front of
`SpeechTokenLM`: the base bit for bit at the start, the reference as the adapter off, the preference length read
from the data's dimensions, and the export (with its speech-token settings) read back, refused by a plain
`SpeechTokenLM` and read as Panacea by evaluate, on the two-reward speech toy world; and the toy recipe on that
world (its front against MODPO's runs at the same weights: the slow test)."""

from __future__ import annotations

import glob
import json
import os
from types import SimpleNamespace

import pytest
import torch

from alignsuite.backbones import PanaceaSpec, PanaceaSpeechLM, SpeechTokenLM
from alignsuite.evaluation.front import hypervolume
from alignsuite.module import PreferenceModule
from alignsuite.objectives import DPO
from alignsuite.toy import get_world
from alignsuite.toy.fronts import preference_front
from conftest import fit_two_rewards, perturb_panacea

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RECIPE = os.path.join(REPO, "recipes", "toy", "tts_panacea.yaml")
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



def test_starts_as_the_base_bit_for_bit_and_the_reference_is_the_adapter_off():
    bb, base = panacea(), SpeechTokenLM("toy:tts", max_length=96, **WORLD.backbone_args)
    bb.configure()
    want = scores(base)
    assert torch.equal(scores(bb), want)
    assert {n.rsplit(".", 1)[-1] for n, p in bb.policy.named_parameters() if p.requires_grad} == {"U", "V", "sigma",
                                                                                                  "scale"}
    perturb_panacea(bb)
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
    perturb_panacea(bb)
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


# ------------------------------------------------------------------------------------------ the toy recipe


def exported(tmp_path) -> PanaceaSpeechLM:
    bb = PanaceaSpeechLM(glob.glob(str(tmp_path / "*" / "version_0" / "export"))[0], max_length=96,
                         **WORLD.backbone_args)
    bb.configure()
    return bb


def test_recipe_end_to_end(tmp_path):
    """The shipped recipe, shortened (two epochs of two steps): both rewards at step 0 and after each epoch, an
    export that loads back with its adapter and reads at any preference vector."""
    rewards = fit_two_rewards(RECIPE, ("clear", "brief"), tmp_path, "--data.init_args.num_train", "32",
                              "--data.init_args.num_val", "16", "--trainer.val_check_interval", "2", num_prompts=16)
    assert len(rewards) == 3 and rewards[0][0] == 0
    assert rewards[0][1:] == pytest.approx((0.545, 0.700), abs=0.06)  # the base model, on 16 of the 128 texts
    assert all(0 <= clear <= 1 and brief >= 0 for _, clear, brief in rewards)
    bb = exported(tmp_path)
    assert bb.preference_dim == 2 and bb.panacea.r == 0 and bb.panacea.preference_rank == 8
    points = preference_front("tts_pace", bb, [[1.0, 0.0], [0.0, 1.0]], num_prompts=8)
    assert all(0 <= p["clear"] <= 1 and p["brief"] >= 0 for p in points)


# MODPO's runs at the same weights (recipes/toy/tts_modpo.yaml, two epochs, the same seed), greedy on the 128
# evaluation texts: (clear, brief) at w = (0.8, 0.2), (0.5, 0.5), (0.2, 0.8) (docs/text-to-speech.md).
MODPO = {0: [(0.583, 0.559), (0.467, 0.765), (0.343, 0.921)],
         1: [(0.607, 0.465), (0.516, 0.613), (0.398, 0.842)],
         2: [(0.620, 0.543), (0.505, 0.736), (0.354, 0.953)]}


@pytest.mark.slow
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_one_panacea_speech_lm_spans_the_front_clearer_than_modpo_at_the_same_vectors(tmp_path, seed):
    """One run of the shipped recipe, its validations off (with them on, seed 0's points were the same to the
    third decimal): from (1, 0) to (0, 1) the preference slows the model into clarity and speeds it into brevity,
    step by step, and at (0.8, 0.2), (0.5, 0.5) and (0.2, 0.8) it is clearer than MODPO's run at that weight, its
    three points' hypervolume above the three runs'. Measured over seeds 0-2
    (docs/text-to-speech.md): clear falls by 0.012 or more and brief rises by 0.105 or more from each vector to the
    next; clear 0.023 or more above MODPO's at each of the three vectors; hypervolume 0.023 or more above. Asserted:
    0.005, 0.05, 0.01, 0.01. Not asserted, as it does not hold on every seed: brief at or above MODPO's (seeds 1
    and 2 land 0.011 to 0.088 below it at some vectors)."""
    fit_two_rewards(RECIPE, ("clear", "brief"), tmp_path, "--seed_everything", str(seed), "--data.init_args.seed",
                    str(seed), "--trainer.limit_val_batches", "0")
    vectors = [[1.0, 0.0], [0.8, 0.2], [0.5, 0.5], [0.2, 0.8], [0.0, 1.0]]
    points = [(p["clear"], p["brief"]) for p in preference_front("tts_pace", exported(tmp_path), vectors)]
    for (clear, brief), (next_clear, next_brief) in zip(points, points[1:]):
        assert clear - next_clear > 0.005 and next_brief - brief > 0.05, points
    for (clear, _), (modpo_clear, _) in zip(points[1:4], MODPO[seed]):
        assert clear - modpo_clear > 0.01, (points, MODPO[seed])
    assert hypervolume(points[1:4], [0.0, 0.0]) - hypervolume(MODPO[seed], [0.0, 0.0]) > 0.01, points
