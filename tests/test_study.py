"""benchmarks/no_warmup_study.py (the grid it runs, how it scores runs, its committed
records) and benchmarks/translation_runner.py (run.py with the study's flags, batches and
evaluation order)."""

from __future__ import annotations

import json
import math
import os
import sys
from pathlib import Path

import datasets
import pytest
import torch
from testing_utils import load_script, tiny_marian, tiny_tokenizer, translation_features

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
STUDY = BENCHMARKS / "no_warmup_study.py"
RUNNER = BENCHMARKS / "translation_runner.py"


@pytest.fixture(scope="module")
def study():
    yield load_script(STUDY, "no_warmup_study")
    sys.modules.pop("no_warmup_study", None)


@pytest.fixture(scope="module")
def runner():
    yield load_script(RUNNER, "translation_runner")
    sys.modules.pop("translation_runner", None)
    sys.modules.pop("translation_example", None)  # run.py, as the runner imports it


def test_grid_flags_each_method_and_the_second_seed_only_where_asked(study):
    args = study.parse_args(["--lrs", "1e-3", "2e-3", "--beta2s", "0.98", "--seeds", "1", "2"])
    args.warmups = [100]
    runs = {r["name"]: r for r in study.grid(args)}
    # 2 lrs x (baseline, warmup, gradinit) for seed 1; the second seed only at 1e-3 / 0.98
    assert len(runs) == 9
    assert not any(name.endswith("lr0.002-b0.98-s2") for name in runs)
    assert all(r["layout"] == "reference" for r in runs.values())
    for r in runs.values():  # run.py's default is all-shared: the reference's is asked for
        f = r["flags"]
        assert f[f.index("--share_all_embeddings") + 1] == "False"
    warm = runs["warmup100-reference-lr0.001-b0.98-s1"]["flags"]
    assert warm[warm.index("--warmup_steps") + 1] == "100" and "--no_gradinit" in warm
    gradinit = next(r for n, r in runs.items() if n.startswith("gradinit") and "0.002" in n)
    flags = gradinit["flags"]
    assert flags[flags.index("--learning_rate") + 1] == "0.002"
    assert flags[flags.index("--gradinit_iterations") + 1] == "200"  # the study's default
    assert flags[flags.index("--warmup_steps") + 1] == "0"


def test_layouts_methods_and_extra_methods(study):
    args = study.parse_args(
        ["--lrs", "1e-3", "--beta2s", "0.98", "--layouts", "reference", "shared"]
        + ["--methods", "baseline", "preln", "--extra_method", "preln=--model_type mbart"]
    )
    args.warmups = [100]
    runs = {r["name"]: r for r in study.grid(args)}
    assert sorted(r["method"] for r in runs.values()) == ["baseline", "baseline", "preln", "preln"]
    shared = [r for r in runs.values() if r["layout"] == "shared"]
    assert all("True" in r["flags"] for r in shared) and len(shared) == 2
    preln = next(r for r in runs.values() if r["method"] == "preln")
    assert preln["flags"][-2:] == ["--model_type", "mbart"]
    with pytest.raises(SystemExit):
        study.parse_args(["--extra_method", "no flags"])


def test_records_are_the_cache_and_survive_a_restart(study, tmp_path):
    records = study.Records(tmp_path / "r.json")
    records.add({"name": "a", "eval_loss": 4.0})
    again = study.Records(tmp_path / "r.json")
    assert again.get("a") == {"name": "a", "eval_loss": 4.0}
    run = {"name": "a", "flags": ["--nonsense"]}
    # A recorded run is returned without running anything (run.py would fail on --nonsense).
    assert study.run_one(run, [], [], tmp_path, {}, again)["eval_loss"] == 4.0


def test_two_study_processes_writing_one_file_keep_both_records(study, tmp_path):
    first, second = study.Records(tmp_path / "r.json"), study.Records(tmp_path / "r.json")
    first.add({"name": "a", "eval_loss": 4.0})
    second.add({"name": "b", "eval_loss": 5.0})  # loaded before "a" was written
    assert set(study.Records(tmp_path / "r.json").runs) == {"a", "b"}


def test_passthrough_arguments_go_to_every_run(study):
    args = study.parse_args(["--lrs", "1e-3", "--warmups", "100", "--", "--d_model", "64"])
    assert args.passthrough == ["--d_model", "64"]
    assert "--d_model" not in sum((r["flags"] for r in study.grid(args)), [])  # added later


def _run(method, final, val, lr=1e-3, seed=1, gradinit_s=0.0):
    losses = [(step, 9.0) for step in range(10, 600, 10)]
    losses += [(step, final) for step in range(610, 701, 10)]
    return dict(
        layout="reference", lr=lr, beta2=0.98, seed=seed, method=method, losses=losses, eval_loss=val,
        eval_bleu=0.0, gradinit_runtime_s=gradinit_s, train_runtime_s=300.0,
        gradinit_args=["--gradinit_iterations", "200"] if method == "gradinit" else [],
    )  # fmt: skip


def test_table_scores_the_last_steps_marks_stalls_and_the_best_warmup(study):
    results = [
        _run("baseline", 6.1, 6.0),
        _run("warmup-100", 4.5, 4.4),
        _run("warmup-300", 4.2, 4.1),
        _run("gradinit", 4.3, 4.2, gradinit_s=100.0),
    ]
    assert study.final_loss(results[0], 700) == pytest.approx(6.1)  # only the last 100 steps
    rows = study.summarize(results, steps=700, stall=6.45).splitlines()[2:]
    assert rows[0].startswith("| reference | 0.001 | 0.98 | baseline | 1 | 6.10 | 6.00 |")
    assert rows[0].split("|")[9].strip() == "yes"  # 6.1 is not 0.5 below 6.45: stalled
    assert "warmup-300 (best warmup)" in rows[2] and "best" not in rows[1]
    assert rows[3].split("|")[9].strip() == "no"
    assert rows[3].split("|")[10].strip() == "25%"  # 100 s of GradInit in 400 s


def test_bleu_table_gives_mean_range_and_seeds_of_runs_with_a_test_set(study):
    results = [_run("gradinit", 4.0, 4.1 + seed, seed=seed) for seed in (3, 1, 2)]
    for r, bleu in zip(results, (12.0, 9.0, 10.5)):
        r["test_bleu"] = bleu
    results.append(_run("baseline", 6.0, 6.0))  # no test set: not in the table
    rows = study.bleu_table(results).splitlines()[2:]
    assert len(rows) == 1
    cells = [c.strip() for c in rows[0].split("|")[1:-1]]
    assert cells[3:] == [
        # records made before the study kept the trainer's defaults: eta 2x lr, scale lr 1e-2
        # and came before the probe
        "gradinit (eta_multiplier 2.0, scale_lr 0.01, iterations 200, no probe)",
        "3",
        "10.5",
        "9.0-12.0",
        "9.0, 10.5, 12.0",
        "6.10",
    ]
    assert study.bleu_table(results[3:]) == ""


def test_a_gradinit_run_is_keyed_and_labelled_by_the_trainers_defaults(study, monkeypatch):
    """Its flags do not name every setting, so the trainer's defaults are part of its
    cache key: after a default changes, the same flags are a new run, not a cached one."""
    args = study.parse_args(["--lrs", "1e-3", "--beta2s", "0.98", "--methods", "gradinit"])
    args.warmups = []
    (before,) = study.grid(args)
    defaults = study.gradinit_defaults()
    assert before["gradinit_defaults"] == defaults
    assert study.label(before) == (
        f"gradinit (eta_multiplier {defaults['gradinit_eta_multiplier']}, scale_lr "
        f"{defaults['gradinit_scale_lr']}, iterations 200, probe {defaults['gradinit_probe_steps']})"
    )
    changed = {**defaults, "gradinit_scale_lr": 0.5}
    monkeypatch.setattr(study, "gradinit_defaults", lambda: changed)
    (after,) = study.grid(args)
    assert after["name"] != before["name"] and after["flags"] == before["flags"]
    assert "scale_lr 0.5" in study.label(after)
    flagged = {**after, "gradinit_args": ["--gradinit_scale_lr", "0.1"]}
    assert "scale_lr 0.1" in study.label(flagged)  # a flag wins over the default


def test_a_diverged_run_is_marked_diverged_not_stalled(study):
    """The Trainer logs 0.0 for a window of NaN losses; the NaN validation loss tells."""
    diverged = _run("baseline", 0.0, float("nan"))
    assert math.isnan(study.final_loss(diverged, 700))
    (row,) = study.summarize([diverged], steps=700, stall=6.45).splitlines()[2:]
    assert row.split("|")[9].strip() == "diverged"


def test_the_committed_records_are_read_and_keep_their_names(study):
    """The records are the study's cache: the grid of the README's example command still
    names the runs they hold (GradInit runs aside: their names carry the trainer's defaults,
    which have changed since), so those are not redone, and they still make the tables."""
    records = study.Records(study.RESULTS / "no_warmup_study_example.json")
    args = study.parse_args(
        ["--preset", "example", "--layouts", "shared", "--lrs", "1e-3", "--beta2s", "0.98"]
        + ["--seeds", "1", "2", "3", "--warmups", "100"]
        + ["--extra_method", "preln=--model_type mbart --no_gradinit"]
        + ["--extra_method", "radam=--torch_optimizer radam --no_gradinit"]
    )
    names = [r["name"] for r in study.grid(args) if r["method"] != "gradinit"]
    assert len(names) == 12 and all(records.get(name) for name in names), names
    rows = study.bleu_table(list(records.runs.values())).splitlines()[2:]
    assert any("| radam |" in row for row in rows) and any("| preln |" in row for row in rows)
    runs = list(study.Records(study.RESULTS / "no_warmup_study.json").runs.values())
    assert len(study.summarize(runs, steps=700, stall=6.45).splitlines()) > 40
    assert len(study.Records(study.RESULTS / "no_warmup_study_v1.json").runs) == 33


# --------------------------------------------------------------------------------------
# benchmarks/translation_runner.py
# --------------------------------------------------------------------------------------

TINY = [
    "--d_model", "32", "--encoder_layers", "1", "--decoder_layers", "1", "--ffn_dim", "64",
    "--attention_heads", "2", "--vocab_size", "160", "--max_source_length", "24",
    "--max_target_length", "24", "--max_steps", "3", "--per_device_train_batch_size", "8",
    "--per_device_eval_batch_size", "8", "--generation_max_length", "10", "--logging_steps", "1",
    "--disable_tqdm", "true", "--max_train_samples", "64", "--max_eval_samples", "8",
    "--max_predict_samples", "6",
]  # fmt: skip


def _study_config(runner, flags: list[str], tokenizer=None):
    from transformers import HfArgumentParser

    parser = HfArgumentParser(runner.StudyArguments, allow_abbrev=False)
    study_args, rest = parser.parse_args_into_dataclasses(flags, return_remaining_strings=True)
    model_args, data_args, _ = runner.run.parse_args(rest)
    return runner.study_config(model_args, data_args, tokenizer or tiny_tokenizer(), study_args)


def test_study_flags_size_the_model_on_top_of_the_example(runner):
    from transformers import AutoModelForSeq2SeqLM

    config = _study_config(runner, ["--encoder_layers", "6", "--decoder_layers", "6"])
    assert (config.d_model, config.encoder_layers, config.decoder_layers) == (128, 6, 6)
    assert config.encoder_ffn_dim == 512 and config.encoder_attention_heads == 4
    config = _study_config(runner, ["--model_size", "iwslt", "--ffn_dim", "2048"])
    assert (config.d_model, config.encoder_layers, config.decoder_ffn_dim) == (512, 6, 2048)
    config = _study_config(runner, ["--init_std", "0.05", "--attention_heads", "2"])
    assert config.init_std == 0.05 and config.decoder_attention_heads == 2
    # a size preset only where asked: run.py's --config_overrides stay otherwise
    config = _study_config(runner, ["--config_overrides", "d_model=256"])
    assert config.d_model == 256 and config.encoder_layers == 3

    # --share_all_embeddings False: fairseq's layout (the encoder's own embedding)
    for shared in (True, False):
        config = _study_config(
            runner, ["--model_size", "tiny", "--share_all_embeddings", str(shared)]
        )
        model = AutoModelForSeq2SeqLM.from_config(config)
        decoder_in = model.get_decoder().embed_tokens.weight
        assert model.get_output_embeddings().weight is decoder_in
        assert (model.get_input_embeddings().weight is decoder_in) is shared
    # the flag is Marian's: the Pre-LN control with the reference layout's flags builds
    config = _study_config(runner, ["--model_type", "mbart", "--share_all_embeddings", "False"])
    assert config.model_type == "mbart" and not hasattr(config, "share_encoder_decoder_embeddings")


def test_unknown_study_values_are_refused(runner):
    with pytest.raises(runner.UsageError, match=r"Unknown --model_size 'huge'"):
        runner.StudyArguments(model_size="huge")
    with pytest.raises(runner.UsageError, match=r"Unknown --torch_optimizer 'lamb'"):
        runner.StudyArguments(torch_optimizer="lamb")


def test_length_buckets_cover_everything_once_in_whole_batches(runner):
    torch.manual_seed(0)
    lengths = [(i * 37) % 23 + 1 for i in range(103)]
    sampler = runner.LengthBucketSampler(lengths, batch_size=8, bucket_batches=3)
    order = list(sampler)
    assert sorted(order) == list(range(103)) and len(sampler) == 103
    batches = [order[i : i + 8] for i in range(0, 103, 8)]
    assert all(len(b) == 8 for b in batches[:-1]) and len(batches[-1]) == 103 % 8
    for batch in batches:  # sorted inside the batch: it came from one sorted bucket
        assert [lengths[i] for i in batch] == sorted(lengths[i] for i in batch)

    def spread(batches):
        return sum(max(lengths[i] for i in b) - min(lengths[i] for i in b) for b in batches)

    random_order = torch.randperm(103).tolist()
    random_batches = [random_order[i : i + 8] for i in range(0, 103, 8)]
    assert spread(batches) < 0.5 * spread(random_batches)  # far less padding
    assert list(sampler) != order  # a new order every epoch


def _trainer(runner, tmp_path, **kwargs):
    from transformers import DataCollatorForSeq2Seq

    from hf_gradinit import GradInitTrainingArguments

    tokenizer = tiny_tokenizer()
    args = GradInitTrainingArguments(
        output_dir=str(tmp_path),
        train_sampling_strategy="group_by_length",
        per_device_train_batch_size=4,
        per_device_eval_batch_size=4,
        gradinit=False,
        report_to="none",
        use_cpu=True,
    )
    model = tiny_marian()
    collator = DataCollatorForSeq2Seq(tokenizer, model)
    return runner.StudyTrainer(
        model=model, args=args, data_collator=collator, processing_class=tokenizer, **kwargs
    )


def test_the_runner_trains_on_length_buckets_unless_told_otherwise(runner, tmp_path):
    """run.py samples batches at random; the records were made with length buckets."""
    preset = str(Path(runner.RUN_PY).parent / "presets" / "iwslt14_gpu.json")
    for argv in (["--max_steps", "7"], [preset, "--max_steps", "7"]):
        *_, args = runner.run.parse_args(runner.run_argv(argv))
        assert args.train_sampling_strategy == "group_by_length" and args.max_steps == 7
    *_, args = runner.run.parse_args(runner.run_argv(["--train_sampling_strategy", "random"]))
    assert args.train_sampling_strategy == "random"
    *_, args = runner.run.parse_args([])
    assert args.train_sampling_strategy == "random"  # run.py's own


def test_training_batches_come_from_the_length_buckets(runner, tmp_path):
    data = datasets.Dataset.from_list(translation_features(30))
    trainer = _trainer(runner, tmp_path, train_dataset=data)
    sampler = trainer._get_train_sampler()
    assert isinstance(sampler, runner.LengthBucketSampler) and sampler.batch_size == 4
    assert sampler.lengths == [
        max(len(s), len(t)) for s, t in zip(data["input_ids"], data["labels"])
    ]


def test_evaluation_runs_longest_first_and_comes_back_in_dataset_order(
    runner, tmp_path, monkeypatch
):
    """The records' evaluation: batches sorted by source length, longest first (their loss
    and generations depend on it); predictions and compute_metrics in dataset order."""
    from transformers import Seq2SeqTrainer

    data = datasets.Dataset.from_list(translation_features(30))
    lengths = [len(ids) for ids in data["input_ids"]]
    assert len(set(lengths)) > 1
    seen, translated = [], []

    def compute_metrics(prediction):
        seen.append([[t for t in row if t != -100] for row in prediction.label_ids.tolist()])
        return {"rows": len(prediction.label_ids)}

    real = Seq2SeqTrainer.predict

    def spy(self, dataset, *args, **kwargs):
        translated.append([len(ids) for ids in dataset["input_ids"]])
        return real(self, dataset, *args, **kwargs)

    monkeypatch.setattr(Seq2SeqTrainer, "predict", spy)
    trainer = _trainer(runner, tmp_path, eval_dataset=data, compute_metrics=compute_metrics)
    output = trainer.predict(data)
    assert translated == [sorted(lengths, reverse=True)]
    assert [[t for t in row if t != -100] for row in output.label_ids.tolist()] == data["labels"]
    assert seen == [data["labels"]] and output.metrics["test_rows"] == 30
    assert trainer.compute_metrics is compute_metrics  # restored

    metrics = trainer.evaluate()  # during training too: sorted, scored in dataset order
    assert seen[-1] == data["labels"] and metrics["eval_rows"] == 30


def test_radam_is_the_optimizer_that_trains(runner, tmp_path, monkeypatch):
    """--torch_optimizer radam: the Trainer builds torch.optim.RAdam with the run's lr and
    betas (recorded by a subclass standing in for it) and steps it."""
    made = []

    class RecordingRAdam(torch.optim.RAdam):
        def __init__(self, params, **kwargs):
            super().__init__(params, **kwargs)
            made.append(self)

    monkeypatch.setattr(torch.optim, "RAdam", RecordingRAdam)
    runner.main(
        [
            *TINY,
            *["--no_gradinit", "--torch_optimizer", "radam", "--learning_rate", "3e-4"],
            *["--adam_beta2", "0.97", "--do_eval", "False", "--do_predict", "False"],
            *["--output_dir", str(tmp_path / "out"), "--cache_dir", str(tmp_path / "cache")],
        ]
    )
    assert len(made) == 1
    group = made[0].param_groups[0]
    assert group["lr"] == pytest.approx(3e-4) and group["betas"] == (0.9, 0.97)
    steps = {int(state["step"]) for state in made[0].state.values()}
    assert steps == {3}  # --max_steps 3


def test_radam_with_gradinit_is_refused(runner, tmp_path):
    with pytest.raises(runner.UsageError, match=r"radam with GradInit.*--no_gradinit"):
        runner.main(
            [*TINY, "--torch_optimizer", "radam", "--output_dir", str(tmp_path / "out")]
            + ["--cache_dir", str(tmp_path / "cache")]
        )


@pytest.mark.slow
def test_runner_end_to_end_with_the_study_flags(runner, tmp_path):
    from transformers import AutoModelForSeq2SeqLM

    out = tmp_path / "out"
    results = runner.main(
        [
            *TINY,
            *["--share_all_embeddings", "False", "--gradinit_iterations", "2"],
            *["--gradinit_probe_steps", "2", "--output_dir", str(out)],
            *["--cache_dir", str(tmp_path / "cache")],
        ]
    )
    assert results == json.loads((out / "all_results.json").read_text())
    assert results["eval_samples"] == 8 and results["test_samples"] == 6
    assert "eval_bleu" in results and results["gradinit_iterations"] == 2
    assert len((out / "test_predictions.txt").read_text().splitlines()) == 6
    model = AutoModelForSeq2SeqLM.from_pretrained(out)
    assert model.config.d_model == 32 and model.config.encoder_ffn_dim == 64
    assert model.get_input_embeddings().weight is not model.get_decoder().embed_tokens.weight


@pytest.mark.slow
def test_the_study_runs_the_runner_and_records_the_run(study, tmp_path):
    """prepare_tokenizer and run_one, as the study calls them (subprocesses), on a tiny run."""
    base = [*TINY, "--max_steps", "10"]  # the study logs every 10 steps
    device = ["--use_cpu", "True"]
    tokenizer = study.prepare_tokenizer(tmp_path / "tokenizer", base, device)
    assert (tokenizer / "tokenizer.json").is_file()
    records = study.Records(tmp_path / "records.json")
    run = dict(name="baseline-tiny", method="baseline", lr=1e-3, beta2=0.98, seed=1)
    run["flags"] = ["--no_gradinit", "--warmup_steps", "0", "--share_all_embeddings", "False"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    record = study.run_one(run, base, device, tmp_path, env, records, predict=True)
    assert record["_ran_now"] and record["losses"] and record["losses"][0][0] == 10
    assert math.isfinite(record["eval_loss"]) and "test_bleu" in record
    assert "benchmarks/translation_runner.py" in record["command"]
    assert (
        study.Records(tmp_path / "records.json").get("baseline-tiny")["eval_loss"]
        == (record["eval_loss"])
    )
