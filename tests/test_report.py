"""The evaluation report: its tables hold the numbers, every image it shows exists and decodes as a PNG,
its figures are written as files, text is escaped, and (slow) a real browser renders it."""

from __future__ import annotations

import base64
import io
import os
import shutil
import subprocess
from html.parser import HTMLParser

import numpy as np
import pytest
from PIL import Image

from alignsuite.evaluation.report import write_report, write_training_report
from alignsuite.evaluation.results import EvalResults, ScorerResult

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


class Page(HTMLParser):
    """The parts of the page the tests look at: image and audio sources, table cells, all text."""

    def __init__(self) -> None:
        super().__init__()
        self.imgs, self.audio, self.cells, self.text, self.stack = [], [], [], [], []
        self.img_attrs: list[dict] = []
        self._cell: list[str] | None = None

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "img":
            self.imgs.append(attrs["src"])
            self.img_attrs.append(attrs)
        elif tag == "audio":
            self.audio.append(attrs["src"])
        elif tag in ("td", "th"):
            self._cell = []
        if tag not in ("img", "meta", "br"):
            self.stack.append(tag)

    def handle_endtag(self, tag):
        assert self.stack and self.stack[-1] == tag, f"</{tag}> closes <{self.stack[-1] if self.stack else None}>"
        self.stack.pop()
        if tag in ("td", "th"):
            self.cells.append("".join(self._cell).strip())
            self._cell = None

    def handle_data(self, data):
        self.text.append(data)
        if self._cell is not None:
            self._cell.append(data)


def parse(path: str) -> Page:
    page = Page()
    with open(path, encoding="utf-8") as f:
        page.feed(f.read())
    page.close()
    assert page.stack == [], f"unclosed tags {page.stack}"
    return page


def png_bytes(src: str, root: str) -> bytes:
    if src.startswith("data:"):
        assert src.startswith("data:image/png;base64,")
        data = base64.b64decode(src.split(",", 1)[1])
    else:
        assert not os.path.isabs(src) and "://" not in src, src  # relative: the page opens from disk
        with open(os.path.join(root, src), "rb") as f:
            data = f.read()
    assert data.startswith(PNG_MAGIC)
    Image.open(io.BytesIO(data)).verify()
    return data


def assert_images_resolve(page: Page, root: str) -> None:
    assert page.imgs
    for src in page.imgs:
        png_bytes(src, root)


def metrics_csv(path: str) -> str:
    """A small CSVLogger file: sparse rows as Lightning writes them (train, lr and val on separate rows)."""
    header = "epoch,lr-AdamW,step,train/loss,train/rewards/accuracies,train/rewards/margins,val/loss,val/toy_reward,val/logps/chosen"
    rows = ["0,,0,,,,0.693,0.35,-4.0"]
    for step in range(3, 40, 4):
        rows.append(f",{5e-4 * step / 40},{step},,,,,,")
        rows.append(f"0,,{step},{0.69 - step / 100},{0.5 + step / 100},{step / 50},,,")
    rows.append("0,,39,,,,0.41,0.97,-2.5")
    with open(path, "w") as f:
        f.write("\n".join([header, *rows]) + "\n")
    return path


def toy_reward(base, aligned, win=0.75, lo=0.6, hi=0.9) -> ScorerResult:
    return ScorerResult(
        "toy_reward", "fraction", base, aligned, mean_base=0.35, mean_aligned=0.875, win_rate=win, ci_low=lo, ci_high=hi
    )


def text_results() -> EvalResults:
    prompts = ["echo a < b & c", "echo d e", "echo f"]
    return EvalResults(
        "text", prompts,
        base_outputs=["a < b & c", "D e", None],
        aligned_outputs=["A <script>alert(1)</script>", "D E", "F"],
        scores=[
            toy_reward([0.333, 0.5, None], [1.0, 1.0, 1.0]),
            ScorerResult("wer", "%", [40.0, 50.0, None], [10.0, 60.0, 0.0], higher_is_better=False,
                         mean_base=45.0, mean_aligned=35.0, win_rate=0.5, ci_low=0.0, ci_high=1.0),
        ],
        failures={"base": 1, "aligned": 0},
        details={"base_model": "toy:llm", "aligned_model": "runs/x & <y>/export", "seed": 0},
    )


def test_text_report_tables_numbers_escaping_and_figures(tmp_path):
    out = str(tmp_path / "report")
    path = write_report(text_results(), out, metrics_csv=metrics_csv(str(tmp_path / "metrics.csv")))
    assert path == os.path.join(out, "report.html")
    page = parse(path)
    assert_images_resolve(page, out)
    # the score table: means, the win rate and its interval as percentages, failures per model
    assert "toy_reward" in page.cells and "0.350" in page.cells and "0.875" in page.cells
    assert "75.0% [60.0, 90.0]" in page.cells and "50.0% [0.0, 100.0]" in page.cells
    assert "45.00" in page.cells and "35.00" in page.cells  # wer, lower is better
    assert "failed: base" in page.cells and "2 / 3" in page.cells
    # prompts and answers come back as the text they were, not as markup
    text = "".join(page.text)
    assert "echo a < b & c" in text and "A <script>alert(1)</script>" in text and "runs/x & <y>/export" in text
    raw = open(path, encoding="utf-8").read()
    assert "echo a &lt; b &amp; c" in raw and "<script>" not in raw
    assert "generation failed" in text
    # the aligned answer that scored higher is marked better; for WER the lower score is the better one
    assert '<span class="better">1.000</span>' in raw and '<span class="better">10.00</span>' in raw
    assert '<span class="worse">60.00</span>' in raw
    figures = set(os.listdir(os.path.join(out, "figures")))
    assert {"win_rates.png", "scores_toy_reward.png", "scores_wer.png", "curve_loss.png", "curve_reward_accuracy.png",
            "curve_reward_margin.png", "curve_learning_rate.png", "curve_val_toy_reward.png",
            "curve_val_logps.png"} <= figures
    for name in figures - {"samples"}:
        assert png_bytes(f"figures/{name}", out)
    # the training table: first and last value of the toy reward with their steps
    assert "val/toy_reward" in page.cells and "0.350 (step 0)" in page.cells and "0.970 (step 39)" in page.cells


def test_vision_language_report_shows_thumbnails_and_answers(tmp_path):
    images = [Image.new("RGB", (32, 32), c) for c in ("red", "green")]
    results = EvalResults(
        "vision_language",
        prompts=[[{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "colour of the <shape>?"}]}],
                 "what colour?"],
        base_outputs=["red", "red"], aligned_outputs=["red", "green"],
        scores=[toy_reward([1.0, 0.0], [1.0, 1.0])],
        conditions=[[images[0]], [images[1]]],
    )
    out = str(tmp_path / "vlm")
    page = parse(write_report(results, out))
    assert_images_resolve(page, out)
    assert sum(src.startswith("figures/samples/condition_") for src in page.imgs) == 2
    assert "user: <image> colour of the <shape>?" in "".join(page.text)
    assert any(c.startswith("green") and c.endswith("toy_reward 1.000") for c in page.cells)  # answer and its score


def test_text_to_image_report_grid_embedded(tmp_path):
    rng = np.random.default_rng(0)
    picture = lambda: Image.fromarray(rng.integers(0, 255, (24, 24, 3), dtype=np.uint8))  # noqa: E731
    results = EvalResults(
        "text_to_image", ["a red square & a <blue> circle", "a cat"],
        base_outputs=[picture(), None], aligned_outputs=[picture(), picture()],
        scores=[ScorerResult("pickscore", "x100", [20.5, None], [21.25, 22.0], mean_base=20.5, mean_aligned=21.625)],
        failures={"base": 1, "aligned": 0},
    )
    out = str(tmp_path / "t2i")
    path = write_report(results, out, embed=True)
    page = parse(path)
    assert page.imgs and all(src.startswith("data:image/png;base64,") for src in page.imgs)
    assert_images_resolve(page, out)
    # 3 samples, the before/after figure, the distribution plot; no win rate given, so no win-rate figure and a dash
    assert len(page.imgs) == 5 and "–" in page.cells and "20.50" in page.cells and "21.62" in page.cells
    samples = sorted(os.listdir(os.path.join(out, "figures", "samples")))
    assert samples == ["aligned_0000.png", "aligned_0001.png", "base_0000.png"]
    with Image.open(os.path.join(out, "figures", "samples", "base_0000.png")) as im:
        assert np.array_equal(np.asarray(im), np.asarray(results.base_outputs[0]))  # full size, lossless
    assert os.path.getsize(os.path.join(out, "figures", "before_after.png")) > 0
    assert "a red square &amp; a &lt;blue&gt; circle" in open(path, encoding="utf-8").read()


def test_dollar_signs_in_captions_and_names_are_drawn_as_text(tmp_path, monkeypatch):
    from matplotlib.figure import Figure

    picture = Image.new("RGB", (24, 24), "red")
    captions = ["a mug of $_$ coffee", "a sign saying $5 off, was $10"]  # the first broke matplotlib's math parser
    results = EvalResults(
        "text_to_image", captions, base_outputs=[picture, picture], aligned_outputs=[picture, picture],
        scores=[ScorerResult("score_$x$", "$", [1.0, 2.0], [2.0, 3.0], win_rate=1.0, ci_low=1.0, ci_high=1.0)],
    )
    as_math, savefig = [], Figure.savefig

    def saving(fig, *args, **kwargs):  # the texts each figure drew as math, read back from its artists
        savefig(fig, *args, **kwargs)
        as_math.extend(t.get_text() for t in fig.findobj(lambda a: hasattr(a, "get_parse_math") and a.get_parse_math()
                                                         and "$" in a.get_text()))

    monkeypatch.setattr(Figure, "savefig", saving)
    out = str(tmp_path / "t2i")
    page = parse(write_report(results, out))
    assert_images_resolve(page, out)
    assert os.path.getsize(os.path.join(out, "figures", "before_after.png")) > 0
    assert as_math == []


def test_speech_outputs_get_a_wav_player(tmp_path):
    import wave

    t = np.linspace(0, 0.1, 1600, dtype=np.float32)
    tone = (0.5 * np.sin(2 * np.pi * 440 * t), 16000)
    results = EvalResults("text_to_speech", ["say hi"], base_outputs=[tone], aligned_outputs=[tone])
    page = parse(write_report(results, str(tmp_path / "tts")))
    assert len(page.audio) == 2 and page.audio[0].startswith("data:audio/wav;base64,")
    with wave.open(io.BytesIO(base64.b64decode(page.audio[0].split(",", 1)[1]))) as w:
        assert (w.getframerate(), w.getnchannels(), w.getnframes()) == (16000, 1, 1600)
        frames = np.frombuffer(w.readframes(1600), dtype="<i2")
    assert abs(frames.max() / 32767 - 0.5) < 0.01


def test_speech_codes_are_played_through_the_backbones_vocoder_and_kept_as_codes_in_results(tmp_path):
    """A speech-token model's outputs are codes: the page plays the first ones vocoded (``listen``), says the rest's
    length in frames, and ``results.json`` keeps the codes as lists (a mel, floats, as a ``.npy`` file)."""
    import json
    import wave

    import torch

    from alignsuite.backbones import SpeechTokenLM
    from alignsuite.evaluation.results import write_results
    from alignsuite.evaluation.run import listen

    backbone = SpeechTokenLM("toy:tts", speech_token_offset=18, codebook_size=32, speech_start_token="<speech>",
                             speech_end_token="</speech>", vocoder="alignsuite.toy.speech.ToyVocoder")
    codes = [torch.tensor([3, 4, 0, 5]), None, torch.tensor([7, 7, 0])]
    heard = listen(backbone, codes, n=2)
    assert len(heard) == 2 and heard[1] is None and heard[0].sampling_rate > 0
    results = EvalResults("text_to_speech", ["a", "b", "c"], base_outputs=codes, aligned_outputs=codes,
                          heard={"base": heard, "aligned": heard})
    out = str(tmp_path / "tts")
    page = parse(write_report(results, out))
    assert len(page.audio) == 2  # prompt 0 on both sides; prompt 1 failed, prompt 2 is past the first two
    with wave.open(io.BytesIO(base64.b64decode(page.audio[0].split(",", 1)[1]))) as w:
        assert w.getnframes() == heard[0].waveform.shape[-1] and w.getframerate() == heard[0].sampling_rate
    html_text = open(os.path.join(out, "report.html")).read()
    assert "4 frames, " in html_text and ">3 frames<" in html_text and "tensor(" not in html_text
    assert json.load(open(write_results(results, out)))["base_outputs"] == [[3, 4, 0, 5], None, [7, 7, 0]]
    mel = torch.randn(5, 8)
    results = EvalResults("text_to_speech", ["a"], base_outputs=[mel], aligned_outputs=[mel[:2]])
    written = json.load(open(write_results(results, out)))
    assert np.array_equal(np.load(os.path.join(out, written["base_outputs"][0])), mel.numpy())
    backbone.vocoder = None
    assert listen(backbone, codes) == []  # no vocoder: the page says the frames alone


def test_training_report_from_metrics_csv_alone(tmp_path):
    out = str(tmp_path / "train")
    page = parse(write_training_report(metrics_csv(str(tmp_path / "metrics.csv")), out))
    assert len(page.imgs) == 6  # loss, accuracy, margin, learning rate, val/toy_reward, val/logps
    assert_images_resolve(page, out)
    assert "train/loss" in page.cells and "0.660 (step 3)" in page.cells


def evaluate_details(run_dir: str) -> dict:
    """The details ``evaluate`` records: paths as it holds them (absolute), a dict of generation settings."""
    return {"base": "toy:llm", "aligned": os.path.join(run_dir, "export"), "prompts": "toy:llm", "num_prompts": 3,
            "seed": 0, "generation_kwargs": {"max_new_tokens": 8, "do_sample": False},
            "errors": {"base": ["RuntimeError: out of memory"]}}


def test_header_settings_read_as_settings_with_no_absolute_path(tmp_path):
    run_dir = str(tmp_path / "runs" / "toy_llm_dpo" / "version_0")
    out = os.path.join(run_dir, "eval")
    results = text_results()
    results.details = evaluate_details(run_dir)
    os.makedirs(run_dir)
    path = write_report(results, out, metrics_csv=metrics_csv(os.path.join(run_dir, "metrics.csv")))
    raw = open(path, encoding="utf-8").read()
    assert "{'" not in raw and "['" not in raw and "{&#x27;" not in raw and "[&#x27;" not in raw  # no Python reprs
    assert str(tmp_path) not in raw  # the aligned model and the metrics file by their place in the run, or name
    page = parse(path)
    labels = page.cells[: page.cells.index("failed generations") + 2 : 2]  # the details table's first column
    assert labels.count("prompts") == 1 and "prompt set" in labels and "num_prompts" not in labels
    pairs = dict(zip(page.cells[0::2], page.cells[1::2]))
    assert pairs["aligned model"] == "export" and pairs["prompts"] == "3" and pairs["prompt set"] == "toy:llm"
    assert pairs["generation"] == "max_new_tokens: 8, do_sample: false"
    assert pairs["first errors"] == "base: RuntimeError: out of memory"
    assert "From metrics.csv." in "".join(page.text)


def test_training_report_title_names_the_run_not_its_absolute_path(tmp_path):
    run_dir = tmp_path / "runs" / "toy_llm_dpo" / "version_0"
    run_dir.mkdir(parents=True)
    path = write_training_report(metrics_csv(str(run_dir / "metrics.csv")), str(run_dir / "report"))
    raw = open(path, encoding="utf-8").read()
    assert str(tmp_path) not in raw and "Training report: toy_llm_dpo/version_0" in raw


def implicit_accuracy(won: list[float]) -> ScorerResult:
    accuracy = sum(won) / len(won)
    return ScorerResult("implicit_reward_accuracy", "fraction of pairs", [0.5] * len(won), won, per="pair",
                        mean_base=0.5, mean_aligned=accuracy, ci_low=accuracy - 0.1, ci_high=min(1.0, accuracy + 0.05))


def test_implicit_reward_accuracy_is_shown_apart_from_win_rates(tmp_path, monkeypatch):
    from alignsuite.evaluation import plots

    drawn, win_rates = [], plots.win_rates
    monkeypatch.setattr(plots, "win_rates", lambda rows, path: drawn.extend(r[0] for r in rows) or win_rates(rows, path))
    results = text_results()
    results.scores.append(implicit_accuracy([1.0] * 7 + [0.5]))  # 8 held-out pairs: more than the 3 prompts
    out = str(tmp_path / "report")
    path = write_report(results, out)
    page = parse(path)
    text = " ".join(" ".join(page.text).split())
    assert drawn == ["toy_reward", "wer"]  # the win-rate chart holds the generations' win rates only
    score_table = page.cells[page.cells.index("scorer") : page.cells.index("scorer") + 8 * 3]
    assert "implicit_reward_accuracy" not in score_table
    assert "implicit reward accuracy on held-out pairs" in text and "93.8%" in text and "8 pairs" in text
    assert "not a win rate" in text and "50% by construction" in text
    answers = [c for c in page.cells if "toy_reward" in c and c != "toy_reward"]  # the answer cells with scores
    assert answers and not any("implicit" in c for c in answers)
    assert not os.path.exists(os.path.join(out, "figures", "scores_implicit_reward_accuracy.png"))


def test_the_page_says_ties_count_as_half_a_win(tmp_path):
    page = parse(write_report(text_results(), str(tmp_path / "report")))
    assert "ties count as half a win" in " ".join(" ".join(page.text).split())


def test_small_images_are_shown_upscaled_and_the_before_after_figure_is_on_the_page(tmp_path):
    tiny = [Image.new("RGB", (16, 16), c) for c in ("red", "blue", "green")]
    results = EvalResults("text_to_image", ["a red square", "a blue square"], base_outputs=tiny[:2],
                          aligned_outputs=[tiny[2], tiny[0]], scores=[toy_reward([0.0, 0.0], [1.0, 1.0])])
    out = str(tmp_path / "t2i")
    page = parse(write_report(results, out))
    samples = [a for a in page.img_attrs if "sample" in a.get("class", "").split()]
    assert len(samples) == 4
    for attrs in samples:
        assert int(attrs["width"]) >= 128 and "pixelated" in attrs["class"].split()
    raw = open(os.path.join(out, "report.html"), encoding="utf-8").read()
    assert "img.pixelated { image-rendering: pixelated;" in raw
    assert "figures/before_after.png" in page.imgs  # the figure itself, not a link to it


def test_vision_language_thumbnails_are_shown_upscaled(tmp_path):
    results = EvalResults("vision_language", ["what colour?"], base_outputs=["red"], aligned_outputs=["red"],
                          conditions=[[Image.new("RGB", (16, 16), "red")]])
    page = parse(write_report(results, str(tmp_path / "vlm")))
    (thumb,) = [a for a in page.img_attrs if "thumb" in a.get("class", "").split()]
    assert int(thumb["width"]) >= 128 and "pixelated" in thumb["class"].split()


def test_a_constant_learning_rate_has_no_axis_offset(tmp_path, monkeypatch):
    from matplotlib.figure import Figure

    from alignsuite.evaluation import plots

    csv_path = tmp_path / "metrics.csv"
    csv_path.write_text("epoch,lr-AdamW,step,train/loss\n" + "".join(f",1e-05,{s},\n0,,{s},0.69\n" for s in range(0, 40, 4)))
    drawn, savefig = {}, Figure.savefig

    def saving(fig, path, *args, **kwargs):  # the axes of each figure, kept to read their ticks back
        savefig(fig, path, *args, **kwargs)
        drawn[os.path.basename(path)] = fig.axes[0]

    monkeypatch.setattr(Figure, "savefig", saving)
    plots.training_curves(str(csv_path), str(tmp_path / "figures"))
    for name in ("curve_learning_rate.png", "curve_loss.png"):
        axis = drawn[name].yaxis
        assert axis.get_offset_text().get_text() == "", name  # no "1e-5" or "+6.9e-1" written above the axis
    labels = [t.get_text() for t in drawn["curve_learning_rate.png"].get_yticklabels()]
    assert "1e-5" in labels and "0" in labels, labels
    assert all(len(label) <= 6 for label in labels), labels


def test_close_discrete_scores_get_distinct_tick_labels(tmp_path, monkeypatch):
    from matplotlib.figure import Figure

    from alignsuite.evaluation import plots

    drawn, savefig = [], Figure.savefig
    monkeypatch.setattr(Figure, "savefig", lambda fig, *a, **k: drawn.append(fig) or savefig(fig, *a, **k))
    scores = [0.0, 0.9996, 0.99999, 1.0]  # a reward that is almost 1 for several prompts: before, "1" three times
    plots.score_distribution("toy_reward", "reward", scores, scores[::-1], str(tmp_path / "scores.png"))
    labels = [t.get_text() for t in drawn[0].axes[0].get_xticklabels()]
    assert len(labels) == 4 and len(set(labels)) == 4, labels


def chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.slow
@pytest.mark.skipif(chromium() is None, reason="no chromium or chromium-browser on PATH")
def test_browser_renders_the_report(tmp_path):
    out = str(tmp_path / "report")
    path = write_report(text_results(), out, metrics_csv=metrics_csv(str(tmp_path / "metrics.csv")))
    shot = str(tmp_path / "shot.png")
    subprocess.run(
        [chromium(), "--headless", "--disable-gpu", "--no-sandbox", f"--screenshot={shot}", "--window-size=1200,1600",
         "file://" + os.path.abspath(path)],
        check=True, capture_output=True, timeout=120,
    )
    with Image.open(shot) as im:
        assert im.size == (1200, 1600)
        pixels = np.asarray(im.convert("L"))
    assert pixels.std() > 10  # text and figures drawn, not a blank page
