"""The text encoder from a Hugging Face Gemma 3 folder or ComfyUI's single file (bf16 or scaled fp8): each
checks and loads strictly, all give the pipeline the same prompt embeddings (fp8 within its rounding), the
embedded SentencePiece tokenizer is the folder's, and every wrong file is refused with what to use instead."""

import json
import shutil
from pathlib import Path

import pytest
import sentencepiece
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from engine import tiny
from engine.protocol_io import EngineError
from engine.recipes import MAX_SEQUENCE_LENGTH, NEGATIVE_PROMPT
from engine.text_encoder import (
    BF16_FILE,
    FP8_FILE,
    GEMMA3_12B_TEXT_SETTINGS,
    HF_FOLDER,
    TOKENIZER_KEY,
    check_text_encoder,
    gemma3_text_config,
    load_text_encoder,
    read_sentencepiece,
)

PROMPT = "a city street at night, equirectangular 360° panorama"
PROMPTS = (PROMPT, NEGATIVE_PROMPT, "  two  spaces\tand a tab\n\n", "Ünïcödé 日本語 🙂", "12345, 6.7!",
           "<start_of_turn>user the sky<end_of_turn>", "")
FP8_TOLERANCE = 0.1  # relative error of the embeddings; float8_e4m3fn keeps 3 mantissa bits (±6 % a weight)


def refused(path) -> EngineError:
    """The error checking ``path`` raises; its message is one line and names the file."""
    with pytest.raises(EngineError) as info:
        check_text_encoder(Path(path))
    assert "\n" not in str(info.value) and Path(path).name in str(info.value)
    return info.value


def refused_on_loading(path) -> EngineError:
    with pytest.raises(EngineError) as info:
        load_text_encoder(Path(path), "cpu", torch.float32)
    assert "\n" not in str(info.value) and Path(path).name in str(info.value)
    return info.value


def embeddings(path) -> tuple:
    """The pipeline's encode_prompt output as the engine asks for it (prompt and negative prompt, CFG)."""
    from diffusers import LTX2InContextPipeline

    tokenizer, text_encoder = load_text_encoder(Path(path), "cpu", torch.float32)
    text = LTX2InContextPipeline(scheduler=None, vae=None, audio_vae=None, text_encoder=text_encoder,
                                 tokenizer=tokenizer, connectors=None, transformer=None, vocoder=None)
    return text.encode_prompt(PROMPT, NEGATIVE_PROMPT, do_classifier_free_guidance=True,
                              max_sequence_length=MAX_SEQUENCE_LENGTH, device="cpu", dtype=torch.float32)


def relative_error(expected: tuple, got: tuple) -> float:
    """The largest relative error of the embeddings; the attention masks must be equal."""
    prompt, prompt_mask, negative, negative_mask = expected
    assert torch.equal(prompt_mask, got[1]) and torch.equal(negative_mask, got[3])
    return max(float((got[0] - prompt).norm() / prompt.norm()), float((got[2] - negative).norm() / negative.norm()))


def rewritten(source, path: Path, change) -> Path:
    """``source`` with its tensors passed through ``change(tensors)``; the metadata kept."""
    with safe_open(str(source), "pt") as f:
        metadata = f.metadata()
    tensors = load_file(str(source))
    save_file(change(tensors) or tensors, str(path), metadata=metadata)
    return path


def without(tensors: dict, key: str) -> dict:
    return {k: v for k, v in tensors.items() if k != key}


@pytest.fixture(scope="module")
def folder_embeddings(tiny_files):
    return embeddings(tiny_files["text_encoder"])


# --- each layout ---------------------------------------------------------------------------------------------

def test_each_layout_is_checked_for_what_it_is(tiny_files):
    folder, single, fp8 = (check_text_encoder(Path(tiny_files[k])) for k in ("text_encoder", "text_encoder_file",
                                                                        "text_encoder_fp8"))
    assert (folder.layout, folder.storage) == ("folder", "bf16")
    assert (single.layout, single.storage) == ("single_file", "bf16")
    assert (fp8.layout, fp8.storage) == ("single_file", "fp8_scaled")
    # What the loaded language model holds in bf16, whatever the file stores it in.
    _, model = load_text_encoder(Path(tiny_files["text_encoder_file"]), "cpu", torch.bfloat16)
    assert single.weight_bytes == fp8.weight_bytes == sum(p.numel() * 2 for p in model.parameters())
    assert folder.weight_bytes == (Path(tiny_files["text_encoder"]) / "model.safetensors").stat().st_size


def test_the_folder_and_the_bf16_single_file_give_the_same_prompt_embeddings(tiny_files, folder_embeddings):
    single = embeddings(tiny_files["text_encoder_file"])
    assert folder_embeddings[0].shape == (1, MAX_SEQUENCE_LENGTH, 16 * 3)  # hidden 16 × (2 layers + embeddings)
    assert relative_error(folder_embeddings, single) == 0.0


def test_fp8_gives_them_within_fp8_error_and_without_its_scales_it_would_be_far_off(tiny_files, folder_embeddings,
                                                                                    tmp_path):
    error = relative_error(folder_embeddings, embeddings(tiny_files["text_encoder_fp8"]))
    assert 0 < error < FP8_TOLERANCE

    def unit_scales(tensors):  # what a loader that ignored the scales would compute
        for key in [k for k in tensors if k.endswith(".weight_scale")]:
            tensors[key] = torch.ones_like(tensors[key])
    unscaled = rewritten(tiny_files["text_encoder_fp8"], tmp_path / "unscaled.safetensors", unit_scales)
    # Weights thousands of times too large; Gemma's norms after attention and feed-forward (and on q and k)
    # take most of that out again, but not what the GELU does to the gate: the embeddings come out unrelated
    # (measured: 0.85 against fp8's 0.03).
    unscaled_error = relative_error(folder_embeddings, embeddings(unscaled))
    assert unscaled_error > 5 * FP8_TOLERANCE and unscaled_error > 10 * error

    def no_scales(tensors):
        return {k: v for k, v in tensors.items() if not k.endswith(".weight_scale")}
    assert refused(rewritten(tiny_files["text_encoder_fp8"], tmp_path / "scaleless.safetensors", no_scales)).code \
        == "corrupt_weights"


def test_comfyui_s_older_fp8_layouts_load_the_same_weights(tiny_files, tmp_path):
    """The old ``scaled_fp8`` marker with ``.scale_weight``/``.scale_input``, and the layers' formats in the
    file's ``_quantization_metadata`` instead of per-layer ``comfy_quant`` tensors."""
    source = tiny_files["text_encoder_fp8"]

    def legacy(tensors):
        renamed = {}
        for key, value in tensors.items():
            if key.endswith(".comfy_quant"):
                continue
            renamed[key.replace(".weight_scale", ".scale_weight").replace(".input_scale", ".scale_input")] = value
        renamed["scaled_fp8"] = torch.zeros(0, dtype=torch.float8_e4m3fn)
        return renamed
    old = rewritten(source, tmp_path / "old.safetensors", legacy)
    layers = {k.removesuffix(".comfy_quant"): json.loads(bytes(v.tolist())) for k, v in load_file(source).items()
              if k.endswith(".comfy_quant")}
    described = tmp_path / "described.safetensors"
    save_file({k: v for k, v in load_file(source).items() if not k.endswith(".comfy_quant")}, str(described),
              metadata={"_quantization_metadata": json.dumps({"format_version": "1.0", "layers": layers})})
    _, expected = load_text_encoder(Path(source), "cpu", torch.float32)
    for path in (old, described):
        assert check_text_encoder(path).storage == "fp8_scaled"
        _, model = load_text_encoder(path, "cpu", torch.float32)
        assert all(torch.equal(value, model.state_dict()[key]) for key, value in expected.state_dict().items())


def test_hidden_states_match_through_global_layers_and_beyond_the_sliding_window(tmp_path):
    """Six layers, the sixth global (linear rope ×8) and the others local, on 1,100 tokens with left padding:
    Gemma3TextModel from the single file gives every hidden state of the folder's whole model."""
    from transformers import Gemma3Config, Gemma3ForConditionalGeneration

    torch.manual_seed(5)
    text = {**tiny.GEMMA_TEXT, "num_hidden_layers": 6, **GEMMA3_12B_TEXT_SETTINGS}
    model = Gemma3ForConditionalGeneration(Gemma3Config(text_config=text, vision_config=tiny.GEMMA_VISION,
                                                        mm_tokens_per_image=4, image_token_index=320))
    model.save_pretrained(tmp_path / "folder")
    language = {"model." + k: v.contiguous() for k, v in model.model.language_model.state_dict().items()}
    spiece = torch.frombuffer(bytearray(tiny.train_tiny_sentencepiece()), dtype=torch.uint8)
    save_file({**language, TOKENIZER_KEY: spiece}, str(tmp_path / "gemma.safetensors"))

    folder = Gemma3ForConditionalGeneration.from_pretrained(tmp_path / "folder", dtype=torch.float32).eval()
    _, single = load_text_encoder(tmp_path / "gemma.safetensors", "cpu", torch.float32)
    assert single.config.layer_types == ["sliding_attention"] * 5 + ["full_attention"]
    ids = torch.randint(4, 320, (2, 1100), generator=torch.Generator().manual_seed(0))
    mask = torch.ones_like(ids)
    ids[1, :60], mask[1, :60] = 0, 0
    with torch.no_grad():
        expected = folder(input_ids=ids, attention_mask=mask, output_hidden_states=True).hidden_states
        got = single(input_ids=ids, attention_mask=mask, output_hidden_states=True).hidden_states
    assert len(got) == len(expected) == 7
    assert all(torch.equal(a, b) for a, b in zip(expected, got))


# Gemma 3 12B's text config as published: google/gemma-3-12b-it's text_config over transformers' defaults,
# spelled out whole by the text-only copy huggingface.co/OpenPipe/gemma-3-12b-it-text-only (config.json).
PUBLISHED_12B_TEXT = {
    "attention_bias": False, "attention_dropout": 0.0, "attn_logit_softcapping": None, "bos_token_id": 2,
    "eos_token_id": 1, "final_logit_softcapping": None, "head_dim": 256, "hidden_activation": "gelu_pytorch_tanh",
    "hidden_size": 3840, "initializer_range": 0.02, "intermediate_size": 15360, "max_position_embeddings": 131072,
    "num_attention_heads": 16, "num_hidden_layers": 48, "num_key_value_heads": 8, "pad_token_id": 0,
    "query_pre_attn_scalar": 256, "rms_norm_eps": 1e-06, "rope_local_base_freq": 10000.0,
    "rope_scaling": {"factor": 8.0, "rope_type": "linear"}, "rope_theta": 1000000.0, "sliding_window": 1024,
    "sliding_window_pattern": 6, "vocab_size": 262208,
}


def test_the_single_file_gets_gemma_3_12b_s_published_config():
    from transformers import Gemma3TextConfig

    shapes = {"model.embed_tokens.weight": (262208, 3840), "model.layers.0.self_attn.q_norm.weight": (256,),
              "model.layers.0.self_attn.q_proj.weight": (4096, 3840),
              "model.layers.0.self_attn.k_proj.weight": (2048, 3840),
              "model.layers.0.mlp.gate_proj.weight": (15360, 3840),
              **{f"model.layers.{n}.input_layernorm.weight": (3840,) for n in range(48)}}
    ours = gemma3_text_config(shapes, Path("gemma.safetensors")).to_dict()
    published = Gemma3TextConfig(**PUBLISHED_12B_TEXT).to_dict()
    assert {k: v for k, v in ours.items() if k != "transformers_version"} == \
        {k: v for k, v in published.items() if k != "transformers_version"}
    assert ours["layer_types"].count("full_attention") == 8 and ours["layer_types"][5] == "full_attention"


# --- the tokenizer -------------------------------------------------------------------------------------------

def test_the_embedded_tokenizer_is_the_folder_s_and_sentencepiece_s(tiny_files):
    from transformers import AutoTokenizer

    folder = AutoTokenizer.from_pretrained(tiny_files["text_encoder"], local_files_only=True)
    single, _ = load_text_encoder(Path(tiny_files["text_encoder_file"]), "cpu", torch.float32)
    with safe_open(tiny_files["text_encoder_file"], "np") as f:
        spiece = f.get_tensor(TOKENIZER_KEY).tobytes()
    assert spiece == (Path(tiny_files["text_encoder"]) / "tokenizer.model").read_bytes()
    reference = sentencepiece.SentencePieceProcessor(model_proto=spiece)
    for prompt in PROMPTS:
        assert folder(prompt).input_ids == single(prompt).input_ids == [reference.bos_id()] + reference.encode(prompt)
    # What the pipeline asks for: padded on the left to a fixed length.
    batch = single(["a city", "the sky at night"], padding="max_length", max_length=8, truncation=True,
                   return_tensors="pt")
    assert batch.attention_mask[0].tolist()[:3] == [0, 0, 0] and batch.attention_mask[0, -1] == 1
    assert batch.input_ids[0, 0] == reference.pad_id()


def test_the_sentencepiece_model_is_read_as_sentencepiece_reads_it(tiny_files):
    spiece = (Path(tiny_files["text_encoder"]) / "tokenizer.model").read_bytes()
    read, reference = read_sentencepiece(spiece), sentencepiece.SentencePieceProcessor(model_proto=spiece)
    assert len(read.pieces) == reference.get_piece_size() == tiny.TOKENIZER_PIECES
    for index, (piece, score, kind) in enumerate(read.pieces):
        assert piece == reference.id_to_piece(index) and score == pytest.approx(reference.get_score(index))
        assert (kind == 3, kind == 6, kind == 2) == (reference.is_control(index), reference.is_byte(index),
                                                     reference.is_unknown(index))
    assert read.special_ids == {"unk": 3, "bos": 2, "eos": 1, "pad": 0} and read.byte_fallback


def test_a_folder_with_only_tokenizer_model_gets_the_same_tokenizer(tiny_files, tmp_path):
    folder = shutil.copytree(tiny_files["text_encoder"], tmp_path / "gemma")
    (folder / "tokenizer.json").unlink()
    (folder / "tokenizer_config.json").unlink()
    tokenizer, _ = load_text_encoder(folder, "cpu", torch.float32)
    expected, _ = load_text_encoder(Path(tiny_files["text_encoder"]), "cpu", torch.float32)
    assert all(tokenizer(p).input_ids == expected(p).input_ids for p in PROMPTS)


# --- wrong files ---------------------------------------------------------------------------------------------

def test_wrong_folders_are_refused(tiny_files, tmp_path):
    error = refused(tmp_path / "gemma")
    assert error.code == "missing_weights" and BF16_FILE in str(error)
    folder = shutil.copytree(tiny_files["text_encoder"], tmp_path / "no-tokenizer")
    for name in ("tokenizer.json", "tokenizer.model"):
        (folder / name).unlink()
    error = refused(folder)
    assert error.code == "missing_weights" and "tokenizer" in str(error) and HF_FOLDER in str(error)
    other = tmp_path / "llama"
    other.mkdir()
    (other / "config.json").write_text(json.dumps({"model_type": "llama"}))
    assert refused(other).code == "missing_weights"
    empty = shutil.copytree(tiny_files["text_encoder"], tmp_path / "no-weights")
    (empty / "model.safetensors").unlink()
    assert refused(empty).code == "missing_weights"
    short = shutil.copytree(tiny_files["text_encoder"], tmp_path / "short")
    rewritten(tiny_files["text_encoder"] + "/model.safetensors", short / "model.safetensors",
              lambda t: {k: v for k, v in t.items() if "layers.1.mlp.down_proj" not in k})
    error = refused_on_loading(short)  # from_pretrained alone would leave it random, with a warning
    assert error.code == "corrupt_weights" and "down_proj" in str(error)


def test_wrong_single_files_are_refused(tiny_files, tmp_path):
    single = tiny_files["text_encoder_file"]
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(Path(single).read_bytes()[:-10])  # an interrupted download
    assert refused(cut).code == "corrupt_weights"
    error = refused(tiny_files["checkpoint"])  # the LTX checkpoint chosen by mistake
    assert error.code == "corrupt_weights" and BF16_FILE in str(error) and HF_FOLDER in str(error)
    error = refused(Path(tiny_files["text_encoder"]) / "model.safetensors")
    assert error.code == "corrupt_weights" and "choose the folder" in str(error)
    error = refused(rewritten(single, tmp_path / "no-tokenizer.safetensors", lambda t: without(t, TOKENIZER_KEY)))
    assert error.code == "missing_weights" and TOKENIZER_KEY in str(error) and BF16_FILE in str(error)
    error = refused(rewritten(single, tmp_path / "extra.safetensors",
                              lambda t: t.update({"unrelated.weight": torch.zeros(2)})))
    assert error.code == "corrupt_weights" and "unrelated.weight" in str(error)


def test_a_tokenizer_that_is_not_gemma_s_is_refused(tiny_files, tmp_path):
    import io

    unigram = io.BytesIO()  # SentencePiece's defaults: unigram, a dummy prefix, NFKC: T5's kind, not Gemma's
    sentencepiece.SentencePieceTrainer.train(sentence_iterator=iter(["a city street at night"] * 4),
                                             model_writer=unigram, vocab_size=16, minloglevel=2)
    for name, spiece in (("other", unigram.getvalue()), ("garbage", b"\xff\xff not a model")):
        path = rewritten(tiny_files["text_encoder_file"], tmp_path / f"{name}.safetensors", lambda t: t.update(
            {TOKENIZER_KEY: torch.frombuffer(bytearray(spiece), dtype=torch.uint8)}))
        error = refused(path)
        assert error.code == "corrupt_weights" and "tokenizer" in str(error)


def test_fp4_mixed_is_refused_with_the_files_to_use_instead(tiny_files, tmp_path):
    """ComfyUI's NVFP4 layout (its ``nvfp4`` format): two 4-bit values a byte, fp8 block scales per 16
    values, a float32 tensor scale."""
    def nvfp4(tensors):
        layer = "model.layers.0.self_attn.q_proj"
        out_features, in_features = tensors[layer + ".weight"].shape
        tensors.update({
            layer + ".weight": torch.zeros(out_features, in_features // 2, dtype=torch.uint8),
            layer + ".weight_scale": torch.ones(out_features, in_features // 16).to(torch.float8_e4m3fn),
            layer + ".weight_scale_2": torch.tensor(1.0), layer + ".input_scale": torch.tensor(1.0),
            layer + ".comfy_quant": torch.tensor(list(b'{"format": "nvfp4"}'), dtype=torch.uint8)})
    error = refused(rewritten(tiny_files["text_encoder_fp8"], tmp_path / "gemma_fp4_mixed.safetensors", nvfp4))
    assert error.code == "missing_weights" and "NVFP4" in str(error)
    assert FP8_FILE in str(error) and BF16_FILE in str(error) and HF_FOLDER in str(error)


def test_a_single_file_with_a_weight_missing_or_misshapen_is_refused_on_loading(tiny_files, tmp_path):
    key = "model.layers.1.mlp.down_proj.weight"
    missing = rewritten(tiny_files["text_encoder_file"], tmp_path / "missing.safetensors", lambda t: without(t, key))
    error = refused_on_loading(missing)
    assert error.code == "corrupt_weights" and key in str(error)
    misshapen = rewritten(tiny_files["text_encoder_file"], tmp_path / "misshapen.safetensors",
                          lambda t: t.update({key: torch.zeros(16, 16, dtype=torch.bfloat16)}))
    assert refused_on_loading(misshapen).code == "corrupt_weights"
