"""examples/translation/run.py end to end, on tiny models and data slices (no network)."""

from __future__ import annotations

import gzip
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import datasets
import pytest
from huggingface_hub import ModelCard
from testing_utils import (
    assert_label_padding_masked,
    load_script,
    record_batches,
    tiny_marian,
    tiny_tokenizer,
    translation_features,
)
from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "translation"
RUN = EXAMPLE / "run.py"

TINY_MODEL = (
    "d_model=32,encoder_layers=1,decoder_layers=1,encoder_ffn_dim=64,decoder_ffn_dim=64,"
    "encoder_attention_heads=2,decoder_attention_heads=2"
)
# A model and a run that take seconds: GradInit (with its probe) and training run, but learn
# nothing.
TINY = [
    "--config_overrides", TINY_MODEL,
    "--vocab_size", "160",
    "--max_source_length", "24",
    "--max_target_length", "24",
    "--max_steps", "3",
    "--gradinit_iterations", "2",
    "--gradinit_probe_steps", "2",
    "--per_device_train_batch_size", "8",
    "--per_device_eval_batch_size", "8",
    "--generation_max_length", "10",
    "--logging_steps", "1",
    "--disable_tqdm", "true",
]  # fmt: skip


@pytest.fixture(scope="module")
def run():
    yield load_script(RUN, "translation_run")
    sys.modules.pop("translation_run", None)


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    text = "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
    if path.name.endswith(".gz"):
        with gzip.open(path, "wt", encoding="utf-8") as f:
            f.write(text)
    else:
        path.write_text(text, encoding="utf-8")
    return path


def fr_en_pairs(n: int) -> list[tuple[str, str]]:
    nouns = [("le chat", "the cat"), ("le chien", "the dog"), ("la maison", "the house")]
    adjectives = [("noir", "black"), ("petit", "small"), ("rouge", "red"), ("vieux", "old")]
    verbs = [("dort", "sleeps"), ("mange", "eats"), ("attend", "waits")]
    pairs = []
    for i in range(n):
        (fn, en), (fa, ea), (fv, ev) = (
            nouns[i % 3],
            adjectives[(i // 3) % 4],
            verbs[(i // 12) % 3],
        )
        pairs.append((f"{fn} {fa} {fv} {i}.", f"{en.replace('the ', 'the ' + ea + ' ')} {ev} {i}."))
    return pairs


def translation_rows(pairs, src="fr", tgt="en"):
    return [{"translation": {src: s, tgt: t}} for s, t in pairs]


def fr_en_args(tmp_path: Path, train: Path, *extra: str) -> list[str]:
    return [
        *TINY,
        "--output_dir", str(tmp_path / "out"),
        "--cache_dir", str(tmp_path / "cache"),
        "--train_file", str(train),
        "--source_lang", "fr",
        "--target_lang", "en",
        *extra,
    ]  # fmt: skip


def read_results(output_dir: Path) -> dict:
    return json.loads((output_dir / "all_results.json").read_text())


def lines(path: Path) -> list[str]:
    return path.read_text(encoding="utf-8").splitlines()


# --------------------------------------------------------------------------------------
# End to end
# --------------------------------------------------------------------------------------


@pytest.mark.slow
def test_end_to_end_on_the_shipped_corpus(run, tmp_path):
    out = tmp_path / "out"
    args = [
        *TINY,
        "--output_dir", str(out),
        "--cache_dir", str(tmp_path / "cache"),
        "--max_train_samples", "96",
        "--max_eval_samples", "6",
        "--max_predict_samples", "5",
    ]  # fmt: skip
    returned = run.main(args)

    results = read_results(out)
    assert returned == results
    for key in ("eval_bleu", "test_bleu", "train_loss", "gradinit_runtime_s"):
        assert isinstance(results[key], float), key
    assert results["eval_samples"] == 6 and results["test_samples"] == 5
    assert results["gradinit_iterations"] == 2
    assert results["test_bleu_signature"].startswith("nrefs:1|case:mixed")
    assert len(lines(out / "validation_predictions.txt")) == 6
    assert len(lines(out / "test_predictions.txt")) == 5
    assert (out / "gradinit_scales.json").is_file()

    # The model card is written locally too, without --push_to_hub: scores and GradInit.
    card = ModelCard.load(out / "README.md")
    assert card.data.language == ["de", "en"] and "gradinit" in card.data.tags
    assert "LibreOffice help German-English" in card.text  # the shipped corpus, by name
    assert f"- validation BLEU: {results['eval_bleu']:.4g}" in card.text
    assert f"- test BLEU: {results['test_bleu']:.4g}" in card.text
    assert results["test_bleu_signature"] in card.text
    assert (
        "## GradInit" in card.text
        and "![GradInit scales and losses](gradinit_scales.png)" in card.text
    )
    assert (out / "gradinit_scales.png").is_file()

    model = AutoModelForSeq2SeqLM.from_pretrained(out)
    tokenizer = AutoTokenizer.from_pretrained(out)
    config = model.config
    assert config.model_type == "marian" and config.d_model == 32  # --config_overrides
    assert config.encoder_layers == config.decoder_layers == 1
    assert config.activation_function == "relu" and config.scale_embedding
    # HF Marian's layout (the default): one matrix for encoder input, decoder input, output
    assert model.get_output_embeddings().weight is model.model.decoder.embed_tokens.weight
    assert model.get_input_embeddings().weight is model.model.decoder.embed_tokens.weight
    assert config.gradinit["summary"]["iterations"] == 2  # the GradInit record travels
    assert (tokenizer.pad_token_id, tokenizer.eos_token_id) == (0, 1)
    batch = tokenizer(["Wählen Sie Extras - Optionen."], return_tensors="pt")
    generated = model.generate(**batch, max_new_tokens=5)
    assert generated.shape[0] == 1 and generated.shape[1] >= 2
    assert isinstance(tokenizer.decode(generated[0], skip_special_tokens=True), str)


@pytest.mark.slow
def test_runs_under_accelerate_launch(tmp_path):
    launcher = shutil.which("accelerate")
    command = [launcher] if launcher else [sys.executable, "-m", "accelerate.commands.launch"]
    out = tmp_path / "out"
    command += [
        "launch", "--cpu", "--num_processes", "1", "--num_machines", "1",
        "--mixed_precision", "no", "--dynamo_backend", "no",
        str(RUN),
        *TINY,
        "--output_dir", str(out),
        "--cache_dir", str(tmp_path / "cache"),
        "--max_train_samples", "64",
        "--max_eval_samples", "4",
        "--max_predict_samples", "4",
    ]  # fmt: skip
    if not launcher:
        command.remove("launch")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    results = read_results(out)
    assert "eval_bleu" in results and "test_bleu" in results
    assert "BLEU: validation" in proc.stdout + proc.stderr


def test_other_language_codes_and_layouts(run, tmp_path):
    """fr->en; translation-style train file, flat {"fr", "en"} validation file (.jsonl.gz),
    no test file."""
    pairs = fr_en_pairs(60)
    train = write_jsonl(tmp_path / "train.jsonl", translation_rows(pairs[:48]))
    flat = [{"fr": s, "en": t} for s, t in pairs[48:]]
    valid = write_jsonl(tmp_path / "valid.jsonl.gz", flat)
    run.main(fr_en_args(tmp_path, train, "--validation_file", str(valid)))
    out = tmp_path / "out"
    results = read_results(out)
    assert results["eval_samples"] == 12 and "eval_bleu" in results
    assert "test_bleu" not in results  # no test file: no test scores
    assert len(lines(out / "validation_predictions.txt")) == 12


def test_without_a_validation_file_part_of_train_is_held_out(run, tmp_path):
    train = write_jsonl(tmp_path / "train.jsonl", translation_rows(fr_en_pairs(60)))
    results = run.main(fr_en_args(tmp_path, train, "--do_predict", "false"))
    assert results["eval_samples"] == 3 and results["train_samples"] == 57  # 5%


def test_dataset_name_goes_through_load_dataset(run, tmp_path, monkeypatch):
    features = datasets.Features({"translation": datasets.Translation(languages=["de", "en"])})

    def split(n, offset):
        rows = [
            {"de": f"Hallo Welt {i}", "en": f"Hello world {i}"} for i in range(offset, offset + n)
        ]
        return datasets.Dataset.from_dict({"translation": rows}, features=features)

    calls = []

    def fake_load_dataset(name, config=None, **kwargs):
        calls.append((name, config, kwargs))
        return datasets.DatasetDict(
            {"train": split(40, 0), "validation": split(5, 100), "test": split(4, 200)}
        )

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    out = tmp_path / "out"
    run.main(
        [
            *TINY,
            *["--output_dir", str(out), "--dataset_name", "someone/iwslt-like"],
            *["--dataset_config_name", "de-en", "--dataset_revision", "refs/convert/parquet"],
        ]
    )
    assert [(name, config) for name, config, _ in calls] == [("someone/iwslt-like", "de-en")]
    assert calls[0][2]["revision"] == "refs/convert/parquet"
    results = read_results(out)
    assert results["eval_samples"] == 5 and results["test_samples"] == 4


@pytest.mark.parametrize("model_type", ["bart", "fsmt", "mbart"])
def test_other_model_types_train_and_translate(run, tmp_path, model_type):
    pairs = fr_en_pairs(40)
    train = write_jsonl(tmp_path / "train.jsonl", translation_rows(pairs[:32]))
    test = write_jsonl(tmp_path / "test.jsonl", translation_rows(pairs[32:]))
    extra = ["--model_type", model_type, "--validation_file", str(test), "--test_file", str(test)]
    run.main(fr_en_args(tmp_path, train, *extra))
    out = tmp_path / "out"
    results = read_results(out)
    assert "eval_bleu" in results and "test_bleu" in results
    model = AutoModelForSeq2SeqLM.from_pretrained(out)
    assert model.config.model_type == model_type and model.config.d_model == 32
    # mbart is the Pre-LN alternative: a LayerNorm after each stack; the Post-LN ones have none
    assert (getattr(model.model.encoder, "layer_norm", None) is not None) == (model_type == "mbart")
    tokenizer = AutoTokenizer.from_pretrained(out)
    generated = model.generate(**tokenizer(["le chat dort"], return_tensors="pt"), max_new_tokens=4)
    assert generated.shape[0] == 1


def test_fsmt_batches_keep_label_padding_out_of_the_loss(run, tmp_path, monkeypatch):
    """run.py has no collator of its own: DataCollatorForSeq2Seq(model=fsmt) would score label
    padding as the pad token (FSMT's shift rewrites the labels in place); the trainer must
    build decoder inputs from a copy."""
    import hf_gradinit.callbacks

    batches = record_batches(monkeypatch, hf_gradinit.callbacks)
    train = write_jsonl(tmp_path / "train.jsonl", translation_rows(fr_en_pairs(40)))
    extra = ["--model_type", "fsmt", "--do_eval", "false", "--do_predict", "false"]
    run.main(fr_en_args(tmp_path, train, *extra))
    assert_label_padding_masked(batches)


def test_a_short_last_batch_does_not_stop_gradinit(run, tmp_path):
    """--max_train_samples 9 with batches of 8: 8 + 1, and a batch of 1 cannot be split."""
    train = write_jsonl(tmp_path / "train.jsonl", translation_rows(fr_en_pairs(40)))
    extra = ["--max_train_samples", "9", "--do_eval", "false", "--do_predict", "false"]
    results = run.main(fr_en_args(tmp_path, train, *extra))
    assert results["train_samples"] == 9 and results["gradinit_iterations"] == 2


def test_evaluation_keeps_the_dataset_order_with_group_by_length(run, tmp_path):
    """transformers' group_by_length also sorts evaluation batches by length; run.py's
    trainer must translate in dataset order, or predictions would not match their sources."""
    from transformers import DataCollatorForSeq2Seq

    from hf_gradinit import GradInitTrainingArguments

    tokenizer = tiny_tokenizer()
    data = datasets.Dataset.from_list(translation_features(30))
    assert len({len(ids) for ids in data["input_ids"]}) > 1  # lengths to group by
    args = GradInitTrainingArguments(
        output_dir=str(tmp_path),
        train_sampling_strategy="group_by_length",
        per_device_eval_batch_size=4,
        gradinit=False,
        report_to="none",
        use_cpu=True,
    )
    model = tiny_marian()
    trainer = run.TranslationTrainer(
        model=model,
        args=args,
        data_collator=DataCollatorForSeq2Seq(tokenizer, model),
        processing_class=tokenizer,
    )
    output = trainer.predict(data)
    got = [[t for t in row if t != -100] for row in output.label_ids.tolist()]
    assert got == data["labels"]


# --------------------------------------------------------------------------------------
# Clear errors
# --------------------------------------------------------------------------------------


def _bad_data_args(tmp_path, train: Path, *extra: str) -> list[str]:
    good = write_jsonl(tmp_path / "good.jsonl", translation_rows(fr_en_pairs(8)))
    return fr_en_args(tmp_path, train, "--validation_file", str(good), *extra)


def test_missing_language_key_is_named(run, tmp_path):
    rows = translation_rows(fr_en_pairs(8), src="de", tgt="en")
    train = write_jsonl(tmp_path / "train.jsonl", rows)
    with pytest.raises(ValueError, match=r"no 'fr' translations.*\['de', 'en'\].*--source_lang"):
        run.main(_bad_data_args(tmp_path, train))


def test_a_pair_without_text_is_named(run, tmp_path):
    rows = translation_rows(fr_en_pairs(8)) + [{"translation": {"fr": "bonjour"}}]
    train = write_jsonl(tmp_path / "train.jsonl", rows)
    with pytest.raises(run.UsageError, match=r"A pair has no 'fr' or 'en' text.*bonjour"):
        run.main(_bad_data_args(tmp_path, train))


def test_empty_data_file(run, tmp_path):
    train = tmp_path / "train.jsonl"
    train.write_text("")
    with pytest.raises(ValueError, match=r"train file .*train\.jsonl is empty"):
        run.main(_bad_data_args(tmp_path, train))


def test_malformed_data_file(run, tmp_path):
    train = tmp_path / "train.jsonl"
    train.write_text('{"translation": {"fr": "bonjour", "en": "hello"}}\nthis is not json\n')
    with pytest.raises(ValueError, match=r"Could not read the train file .* as JSON lines"):
        run.main(_bad_data_args(tmp_path, train))


def test_missing_file_and_wrong_format(run, tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        run.main(_bad_data_args(tmp_path, tmp_path / "nope.jsonl"))
    csv = tmp_path / "train.csv"
    csv.write_text("fr,en\nbonjour,hello\n")
    with pytest.raises(ValueError, match="is not JSON lines"):
        run.main(_bad_data_args(tmp_path, csv))


@pytest.mark.parametrize(
    "target,tokenize,match",
    [
        (
            "ja",
            None,
            r"default tokenizer for 'ja'.*pip install \"sacrebleu\[ja\]\".*--bleu_tokenize",
        ),
        (
            "ko",
            None,
            r"default tokenizer for 'ko'.*pip install \"sacrebleu\[ko\]\".*--bleu_tokenize",
        ),
        ("en", "nope", r"'nope' tokenizer cannot run here.*--bleu_tokenize.*13a"),
    ],
    ids=["ja", "ko", "unknown"],
)
def test_bleu_tokenizer_problems_are_one_line_errors_before_any_work(
    run, tmp_path, monkeypatch, target, tokenize, match
):
    train = write_jsonl(tmp_path / "train.jsonl", translation_rows(fr_en_pairs(8), tgt=target))

    def no_work(*args, **kwargs):
        raise AssertionError("work started before the BLEU tokenizer was checked")

    monkeypatch.setattr(datasets, "load_dataset", no_work)
    extra = ["--bleu_tokenize", tokenize] if tokenize else []
    with pytest.raises(run.UsageError, match=match) as info:
        run.main(_bad_data_args(tmp_path, train, "--target_lang", target, *extra))
    assert "\n" not in str(info.value)


def test_unknown_model_type(run, tmp_path):
    with pytest.raises(ValueError, match=r"Unknown --model_type 'gpt2'.*marian, bart, fsmt"):
        run.main(["--model_type", "gpt2", "--output_dir", str(tmp_path)])


def test_bad_config_overrides_are_one_line_errors(run):
    model_args, data_args, _ = run.parse_args(["--config_overrides", "d_modle=64"])
    with pytest.raises(
        run.UsageError, match=r"--config_overrides 'd_modle=64': key d_modle"
    ) as info:
        run.build_config(model_args, data_args, tiny_tokenizer())
    assert "\n" not in str(info.value)
    model_args, data_args, _ = run.parse_args(["--config_overrides", "d_model"])
    with pytest.raises(run.UsageError, match=r"--config_overrides 'd_model'"):
        run.build_config(model_args, data_args, tiny_tokenizer())


def test_user_errors_exit_cleanly_from_the_command_line(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run(
        [sys.executable, str(RUN), "--model_type", "t9", "--output_dir", str(tmp_path)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode != 0
    assert "Unknown --model_type 't9'" in proc.stderr
    assert "Traceback" not in proc.stderr


# --------------------------------------------------------------------------------------
# Pieces
# --------------------------------------------------------------------------------------


def test_presets_parse(run, tmp_path):
    presets = sorted((EXAMPLE / "presets").glob("*.*"))
    assert {p.name for p in presets} >= {"iwslt14_gpu.json", "libreoffice_gpu.yaml"}
    for preset in presets:
        model_args, data_args, training_args = run.parse_args(
            [str(preset), "--output_dir", str(tmp_path)]
        )
        assert training_args.output_dir == str(tmp_path)  # the command line wins
        assert training_args.warmup_steps == 0 and training_args.gradinit
        # the paper's transformer_iwslt_de_en: 6+6 Post-LN layers, d_model 512, FFN 1024
        config = run.build_config(model_args, data_args, tiny_tokenizer())
        assert (config.d_model, config.encoder_layers, config.decoder_layers) == (512, 6, 6)
        assert config.encoder_ffn_dim == config.decoder_ffn_dim == 1024
        assert config.encoder_attention_heads == 4 and config.dropout == 0.3
        assert training_args.label_smoothing_factor == 0.1
        assert training_args.learning_rate == 5e-4
        assert (training_args.adam_beta1, training_args.adam_beta2) == (0.9, 0.98)
        assert training_args.generation_num_beams == 5


def test_defaults_are_the_cpu_recipe(run, tmp_path):
    model_args, data_args, args = run.parse_args([])
    assert args.do_train and args.do_eval and args.do_predict and args.predict_with_generate
    assert args.gradinit and args.gradinit_iterations == 200
    assert args.learning_rate == 1e-3 and args.warmup_steps == 0
    assert args.lr_scheduler_type == "constant" and args.max_grad_norm == 0
    assert (args.adam_beta1, args.adam_beta2) == (0.9, 0.98) and "adam" in args.optim
    assert args.max_steps == 1000 and args.per_device_train_batch_size == 32
    assert args.generation_num_beams == 1 and args.train_sampling_strategy == "random"
    assert Path(data_args.train_file) == EXAMPLE / "data" / "train.jsonl.gz"
    assert Path(data_args.test_file) == EXAMPLE / "data" / "test.jsonl.gz"
    assert (data_args.source_lang, data_args.target_lang) == ("de", "en")
    assert model_args.model_type == "marian" and model_args.tokenizer_name is None
    assert model_args.vocab_size == 4000
    # a Post-LN Marian, 3+3 layers, d_model 128, FFN 512, 4 heads, relu, dropout 0
    config = run.build_config(model_args, data_args, tiny_tokenizer())
    assert config.model_type == "marian" and config.vocab_size == len(tiny_tokenizer())
    assert (config.d_model, config.encoder_layers, config.decoder_layers) == (128, 3, 3)
    assert config.encoder_ffn_dim == config.decoder_ffn_dim == 512
    assert config.encoder_attention_heads == config.decoder_attention_heads == 4
    assert config.activation_function == "relu" and config.scale_embedding
    assert config.dropout == config.attention_dropout == config.activation_dropout == 0
    _, _, off = run.parse_args(["--no_gradinit", "--output_dir", str(tmp_path)])
    assert off.gradinit is False


@pytest.mark.parametrize("shared", [True, False])
def test_marian_layout_is_all_shared_unless_overridden(run, shared):
    overrides = "d_model=16,encoder_layers=1,decoder_layers=1"
    if not shared:  # fairseq's layout: the encoder's own embedding, the decoder's tied
        overrides += ",share_encoder_decoder_embeddings=false"
    model_args, data_args, _ = run.parse_args(["--config_overrides", overrides])
    config = run.build_config(model_args, data_args, tiny_tokenizer())
    model = AutoModelForSeq2SeqLM.from_config(config)
    decoder_in = model.get_decoder().embed_tokens.weight
    assert model.get_output_embeddings().weight is decoder_in
    assert (model.get_input_embeddings().weight is decoder_in) is shared
    assert config.d_model == 16 and config.encoder_layers == 1


def test_warmup_steps_warm_up_on_top_of_the_constant_default(run, tmp_path):
    """transformers' "constant" schedule ignores warmup_steps; the script must not."""
    _, _, args = run.parse_args(["--warmup_steps", "100", "--output_dir", str(tmp_path)])
    assert args.lr_scheduler_type == "constant_with_warmup"
    _, _, args = run.parse_args(
        ["--warmup_steps", "100", "--lr_scheduler_type", "linear", "--output_dir", str(tmp_path)]
    )
    assert args.lr_scheduler_type == "linear"  # an explicit schedule is kept
    train = write_jsonl(tmp_path / "train.jsonl", translation_rows(fr_en_pairs(48)))
    extra = [
        *["--max_steps", "4", "--warmup_steps", "2", "--learning_rate", "1e-3"],
        *["--no_gradinit", "--do_eval", "false", "--do_predict", "false"],
    ]
    run.main(fr_en_args(tmp_path, train, *extra))
    history = json.loads((tmp_path / "out" / "trainer_state.json").read_text())["log_history"]
    lrs = [h["learning_rate"] for h in history if "learning_rate" in h]
    assert lrs[:4] == pytest.approx([0.0, 5e-4, 1e-3, 1e-3])  # transformers: step 1 at lr 0


def test_trained_tokenizer_round_trips(run):
    texts = [
        "Wählen Sie Extras - Optionen - LibreOffice Calc - Ansicht.",
        "Choose Tools - Options - LibreOffice Calc - View.",
        "=NPV(8.75%;A1:A3) gives 1,234.5",
    ] * 20
    tokenizer = run.train_tokenizer(iter(texts), vocab_size=150)
    ids = tokenizer(texts[0])["input_ids"]
    assert ids[-1] == tokenizer.eos_token_id == 1
    assert tokenizer.pad_token_id == 0 and tokenizer.unk_token_id == 2
    for text in texts[:3]:
        decoded = tokenizer.decode(tokenizer(text)["input_ids"], skip_special_tokens=True)
        assert decoded == text


@pytest.mark.parametrize("do_train", [False, True], ids=["initialize_only", "train"])
def test_push_uploads_model_scales_and_card_once(run, tmp_path, hub, do_train):
    """--push_to_hub: one upload at the end (model, scales and card), not one more from
    save_model; --do_train false: GradInit only."""
    train = write_jsonl(tmp_path / "train.jsonl", translation_rows(fr_en_pairs(24)))
    extra = [
        *["--do_train", str(do_train).lower(), "--do_eval", "false", "--do_predict", "false"],
        *["--push_to_hub", "true", "--hub_model_id", "someone/marian-gradinit-init"],
    ]
    results = run.main(fr_en_args(tmp_path, train, *extra))
    assert results["gradinit_iterations"] == 2 and ("train_loss" in results) == do_train
    assert len(hub["uploads"]) == 1  # one commit: the final push, with the card
    upload = hub["uploads"][0]
    assert upload["repo_id"] == "someone/marian-gradinit-init"
    for name in ("model.safetensors", "config.json", "tokenizer.json", "gradinit_scales.json"):
        assert name in upload["files"]
    assert "GradInit" in upload["files"]["README.md"].decode()
    model = AutoModelForSeq2SeqLM.from_pretrained(tmp_path / "out")
    assert model.config.gradinit["summary"]["iterations"] == 2


def test_help_shows_the_script_defaults(run, capsys):
    with pytest.raises(SystemExit) as exit_info:
        run.parse_args(["--help"])
    assert exit_info.value.code == 0
    text = " ".join(capsys.readouterr().out.split())  # undo the line wrapping
    assert "--source_lang" in text and "--gradinit_iterations" in text
    assert "--config_overrides" in text
    assert "(default: constant)" in text  # TRAINING_DEFAULTS, not TrainingArguments' own
