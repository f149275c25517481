# SPDX-License-Identifier: GPL-3.0-or-later
"""The text encoder, Gemma 3 12B, from either of the two forms users have it in.

- **A Hugging Face folder** (``google/gemma-3-12b-it``): ``config.json`` of a ``gemma3`` model, a tokenizer
  (``tokenizer.json``, or only SentencePiece's ``tokenizer.model``) and safetensors shards. It loads whole,
  as ``Gemma3ForConditionalGeneration``, through transformers' own loader.
- **ComfyUI's single file** (Comfy-Org/ltx-2, ``split_files/text_encoders/``): the language model under
  Hugging Face's names (``model.embed_tokens.weight``, ``model.layers.N.…``, ``model.norm.weight``), maybe
  the vision tower (``vision_model.*``, ``multi_modal_projector.*``: unused, the prompt is text), and the
  tokenizer as a uint8 tensor ``spiece_model`` holding the bytes of SentencePiece's ``tokenizer.model``.
  It carries no config: the sizes are read off the tensors' shapes and the rest is Gemma 3 12B's
  (:data:`GEMMA3_12B_TEXT_SETTINGS`). It loads as ``Gemma3TextModel``, the language model inside the
  folder's model, whose hidden states are the same; the pipeline only asks for those.

ComfyUI stores quantised layers in three ways (ComfyUI's ``comfy/utils.py`` ``convert_old_quants`` turns
the first two into the third on loading; ``comfy/quant_ops.py`` ``QUANT_ALGOS`` lists each format's tensors);
all three keep the layer's weight as ``<layer>.weight`` in its quantised type:

- the old "scaled fp8": a ``scaled_fp8`` marker tensor, ``<layer>.scale_weight`` (and ``.scale_input``);
- ``_quantization_metadata`` in the file's metadata, ``{"layers": {<layer>: {"format": …}}}``, with
  ``<layer>.weight_scale`` (and ``.input_scale``);
- a ``<layer>.comfy_quant`` uint8 tensor holding that JSON per layer, with the same scale names.

Format ``float8_e4m3fn`` (or ``float8_e5m2``) has one float32 scale per tensor: the weight is
``weight.float() * scale``, done here once on loading. The input scales only serve fp8 matrix units and are
not needed once the weights are dequantised. ``nvfp4`` (``gemma_3_12B_it_fp4_mixed.safetensors``) packs
two 4-bit values a byte with block scales (``weight_scale``) and a tensor scale (``weight_scale_2``) in a
layout kept by ComfyUI's kernels; it is refused, with the files to use instead, as are other formats.

Errors: ``missing_weights`` when something is absent (the path, the tokenizer, the config) or the file is
in a form this engine cannot load; ``corrupt_weights`` when the contents are not what they must be
(damaged, truncated, not Gemma 3, weights that do not fit). Each message names the file and what to use.
"""

from __future__ import annotations

import json
import re
import struct
from dataclasses import dataclass
from pathlib import Path

from .protocol_io import EngineError
from .weights import Header, dequantised, mismatch, read_header

BF16_FILE = "gemma_3_12B_it.safetensors"
FP8_FILE = "gemma_3_12B_it_fp8_scaled.safetensors"
HF_FOLDER = "google/gemma-3-12b-it"
USE_INSTEAD = (f"choose the Gemma 3 12B folder ({HF_FOLDER}) or ComfyUI's {BF16_FILE} or {FP8_FILE} "
               "(Comfy-Org/ltx-2, split_files/text_encoders/)")

# Gemma 3 12B's text settings besides its sizes: google/gemma-3-12b-it's config.json sets rope_scaling
# (linear, ×8) and sliding_window (1024) in its text_config and leaves the rest to transformers'
# Gemma3TextConfig defaults, written out here (as the text-only copies of the 12B config on the Hub spell
# them) so that a later transformers cannot change them underneath. ComfyUI's Gemma3_12B_Config agrees.
GEMMA3_12B_TEXT_SETTINGS = {
    "hidden_activation": "gelu_pytorch_tanh", "rms_norm_eps": 1e-6, "max_position_embeddings": 131072,
    "query_pre_attn_scalar": 256, "sliding_window": 1024, "sliding_window_pattern": 6,
    "rope_theta": 1_000_000.0, "rope_local_base_freq": 10_000.0,
    "rope_scaling": {"rope_type": "linear", "factor": 8.0},
    "attention_bias": False, "attention_dropout": 0.0, "attn_logit_softcapping": None,
    "final_logit_softcapping": None, "pad_token_id": 0, "eos_token_id": 1, "bos_token_id": 2,
}

TEXT_PREFIX = "model."
EMBEDDINGS = "model.embed_tokens.weight"
TOKENIZER_KEY = "spiece_model"
SCALED_FP8_MARKER = "scaled_fp8"
UNUSED_PREFIXES = ("vision_model.", "vision_tower.", "multi_modal_projector.")  # the image side
# The file's other tensors: the tokenizer, the old scaled-fp8 marker, and the language-model head, which
# Gemma ties to the embeddings and the hidden states never pass through.
OTHER_KEYS = (TOKENIZER_KEY, SCALED_FP8_MARKER, "lm_head.weight")
HF_SHARD_PREFIXES = ("language_model.", "model.language_model.")  # a shard of the folder, not ComfyUI's file
WEIGHT_SCALES = (".weight_scale", ".scale_weight")  # ComfyUI's name, and the old scaled_fp8 one
COMPANIONS = (".weight_scale", ".scale_weight", ".input_scale", ".scale_input", ".weight_scale_2",
              ".pre_quant_scale", ".comfy_quant")  # per-layer quantisation data, not weights
QUANT_CONFIG = ".comfy_quant"
QUANT_METADATA = "_quantization_metadata"
FP8_TYPES = {"F8_E4M3": "float8_e4m3fn", "F8_E5M2": "float8_e5m2"}  # safetensors dtype → ComfyUI format
FLOAT_TYPES = ("BF16", "F16", "F32", "F64")


@dataclass(frozen=True)
class TextEncoderFiles:
    """What :func:`check_text_encoder` found. ``weight_bytes``, for memory planning, is what the loaded model
    holds on the device: the folder's shards, or the single file's language model in bf16 (fp8 dequantised)."""
    path: Path
    layout: str        # "folder" (Hugging Face) or "single_file" (ComfyUI)
    storage: str       # how the weights are stored: "bf16" (or "f16", "f32"), or "fp8_scaled"
    weight_bytes: int


def check_text_encoder(path: Path) -> TextEncoderFiles:
    """A Gemma 3 folder or ComfyUI's single file, checked from its headers before anything is loaded."""
    path = Path(path)
    if path.is_dir():
        return _check_folder(path)
    _require(path)
    return _inspect_single_file(path)[0]


def load_text_encoder(path: Path, device: str, dtype):
    """(tokenizer, model) for the pipeline's ``encode_prompt``, on ``device`` in ``dtype``; nothing is
    downloaded. The tokenizer pads on the left, as the pipeline needs."""
    path = Path(path)
    if path.is_dir():
        _check_folder(path)
        tokenizer, model = _load_folder(path, device, dtype)
    else:
        _require(path)
        tokenizer, model = _load_single_file(path, device, dtype)
    tokenizer.padding_side = "left"
    return tokenizer, model.eval().requires_grad_(False)


def _require(path: Path) -> None:
    if not path.exists():
        raise EngineError("missing_weights", f"text encoder not found: {path}; in the add-on's preferences, "
                                             f"{USE_INSTEAD}")


# --- the Hugging Face folder ---------------------------------------------------------------------------------

def _check_folder(folder: Path) -> TextEncoderFiles:
    try:
        config = json.loads((folder / "config.json").read_text())
    except FileNotFoundError:
        raise EngineError("missing_weights", f"{folder} has no config.json: it is not a Hugging Face Gemma 3 "
                                             f"folder; {USE_INSTEAD}") from None
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise EngineError("corrupt_weights", f"{folder}/config.json is damaged: download it again") from None
    if config.get("model_type") != "gemma3":
        raise EngineError("missing_weights", f"{folder} holds a {config.get('model_type')!r} model, not Gemma 3: "
                                             f"{USE_INSTEAD}")
    if not any((folder / name).is_file() for name in ("tokenizer.json", "tokenizer.model")):
        raise EngineError("missing_weights", f"{folder} has no tokenizer (tokenizer.json or tokenizer.model): "
                                             f"download it from {HF_FOLDER} into the folder")
    if not (folder / "tokenizer.json").is_file():
        read_gemma_sentencepiece((folder / "tokenizer.model").read_bytes(), folder / "tokenizer.model")
    shards = sorted(folder.glob("*.safetensors"))
    if not shards:
        raise EngineError("missing_weights", f"{folder} has no .safetensors weights: download them from "
                                             f"{HF_FOLDER}")
    headers = [read_header(shard, "text encoder shard") for shard in shards]
    stored = _dominant_type({k: h.dtypes[k] for h in headers for k in h.keys},
                            {k: h.nbytes[k] for h in headers for k in h.keys})
    return TextEncoderFiles(folder, "folder", stored, sum(shard.stat().st_size for shard in shards))


def _load_folder(folder: Path, device: str, dtype):
    from transformers import AutoTokenizer, Gemma3ForConditionalGeneration

    try:
        if (folder / "tokenizer.json").is_file():
            tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
        else:  # transformers would need protobuf to read it; the engine reads it itself
            tokenizer = tokenizer_from_sentencepiece((folder / "tokenizer.model").read_bytes(),
                                                     folder / "tokenizer.model")
        model, info = Gemma3ForConditionalGeneration.from_pretrained(
            folder, dtype=dtype, local_files_only=True, device_map=device, output_loading_info=True)
    except (OSError, ValueError) as err:
        message = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise EngineError("corrupt_weights", f"text encoder {folder} could not be loaded ({message[:200]}): "
                                             f"{USE_INSTEAD}") from None
    # from_pretrained only warns about missing or misshapen weights and leaves them random.
    found = {name: sorted(map(str, info.get(name) or ())) for name in ("missing_keys", "mismatched_keys",
                                                                       "unexpected_keys")}
    wrong = [f"{len(keys)} {name.replace('_', ' ')} (e.g. {keys[0]})" for name, keys in found.items() if keys]
    if wrong:
        raise EngineError("corrupt_weights", f"{folder}: the weights do not match Gemma 3 ({'; '.join(wrong)}): "
                                             f"download {HF_FOLDER} again")
    return tokenizer, model


# --- ComfyUI's single file -----------------------------------------------------------------------------------

def _inspect_single_file(path: Path) -> tuple[TextEncoderFiles, Header, SentencePieceModel]:
    """The file checked from its header, its per-layer quantisation JSON and its tokenizer (numpy reads
    those few byte tensors, so checking needs no torch)."""
    from safetensors import safe_open

    header = read_header(path, "text encoder")
    keys = set(header.keys)
    if EMBEDDINGS not in keys or f"{TEXT_PREFIX}layers.0.self_attn.q_norm.weight" not in keys:
        if any(k.startswith(HF_SHARD_PREFIXES) for k in keys):
            raise EngineError("corrupt_weights", f"{path} is one shard of a Hugging Face Gemma 3 folder: choose "
                                                 "the folder that holds it")
        raise EngineError("corrupt_weights", f"{path} is not a Gemma 3 text encoder (no {EMBEDDINGS} or "
                                             f"model.layers.*): {USE_INSTEAD}")
    foreign = sorted(k for k in keys if not k.startswith((TEXT_PREFIX, *UNUSED_PREFIXES)) and k not in OTHER_KEYS)
    if foreign:
        raise EngineError("corrupt_weights", f"{path} holds tensors that are not Gemma 3's ({len(foreign)}, e.g. "
                                             f"{foreign[0]}): {USE_INSTEAD}")
    if TOKENIZER_KEY not in keys:
        raise EngineError("missing_weights", f"{path} has no embedded tokenizer ({TOKENIZER_KEY}), which "
                                             f"ComfyUI's Gemma 3 files carry: {USE_INSTEAD}")
    if header.dtypes[TOKENIZER_KEY] != "U8":
        raise EngineError("corrupt_weights", f"{path}: {TOKENIZER_KEY} is {header.dtypes[TOKENIZER_KEY]}, not the "
                                             f"bytes of a tokenizer: {USE_INSTEAD}")
    weights = _text_weights(header)
    storage = _storage(path, header, weights)
    with safe_open(str(path), framework="np") as f:
        _check_layer_formats(f, header, path)
        spm = read_gemma_sentencepiece(f.get_tensor(TOKENIZER_KEY).tobytes(), path)
    values = sum(_count(header.shapes[k]) for k in weights)
    return TextEncoderFiles(path, "single_file", storage, 2 * values), header, spm


def _text_weights(header: Header) -> list[str]:
    """The language model's tensors, without the per-layer quantisation data that goes with them."""
    return [k for k in header.keys if k.startswith(TEXT_PREFIX) and not k.endswith(COMPANIONS)]


def _storage(path: Path, header: Header, weights: list[str]) -> str:
    """"fp8_scaled", or the plain float type the weights are stored in; refuses what cannot be loaded."""
    try:
        layers = json.loads(header.metadata.get(QUANT_METADATA, "{}")).get("layers", {})
    except (json.JSONDecodeError, AttributeError):
        raise EngineError("corrupt_weights", f"{path} has damaged {QUANT_METADATA} metadata: download it "
                                             "again") from None
    formats = {str(conf.get("format") if isinstance(conf, dict) else conf) for conf in layers.values()}
    packed = [k for k in weights if header.dtypes[k] not in FLOAT_TYPES and header.dtypes[k] not in FP8_TYPES]
    if packed or "nvfp4" in formats or any(k.endswith(".weight_scale_2") for k in header.keys):
        kind = "NVFP4 (4-bit, fp4_mixed)" if "nvfp4" in formats or any(
            header.dtypes[k] == "U8" for k in packed) or not packed else f"{header.dtypes[packed[0]]}-quantised"
        raise EngineError("missing_weights", f"{path.name} holds {kind} weights, which this engine cannot "
                                             f"load: download {FP8_FILE} or {BF16_FILE} (Comfy-Org/ltx-2, "
                                             f"split_files/text_encoders/) or use the {HF_FOLDER} folder")
    if formats - set(FP8_TYPES.values()):
        raise EngineError("missing_weights", f"{path.name} is quantised as {sorted(formats)[0]!r}, which this "
                                             f"engine cannot load: {USE_INSTEAD}")
    fp8 = [k for k in weights if header.dtypes[k] in FP8_TYPES]
    for key in fp8:
        scale = _scale_key(header, key)
        if scale is None:
            raise EngineError("corrupt_weights", f"{path}: the fp8 weight {key} has no scale (.weight_scale or "
                                                 ".scale_weight), without which it is thousands of times too large: "
                                                 f"download {FP8_FILE} again")
        if _count(header.shapes[scale]) != 1:  # block scales (mxfp8): a layout this engine does not unpack
            raise EngineError("missing_weights", f"{path.name} has block-scaled fp8 weights ({scale} is "
                                                 f"{list(header.shapes[scale])}): {USE_INSTEAD}")
    return "fp8_scaled" if fp8 else _dominant_type(header.dtypes, header.nbytes, weights)


def _scale_key(header: Header, weight: str) -> str | None:
    layer = weight.removesuffix(".weight")
    return next((layer + name for name in WEIGHT_SCALES if layer + name in header.nbytes), None)


def _check_layer_formats(f, header: Header, path: Path) -> None:
    """Each layer's ``comfy_quant`` JSON, where the file has them, names a format loaded here."""
    for key in header.keys:
        if key.startswith(TEXT_PREFIX) and key.endswith(QUANT_CONFIG):
            try:
                conf = json.loads(f.get_tensor(key).tobytes())
                layer_format = conf.get("format") if isinstance(conf, dict) else conf
            except (json.JSONDecodeError, UnicodeDecodeError, AttributeError):
                raise EngineError("corrupt_weights", f"{path}: {key} is damaged: download it again") from None
            if layer_format not in FP8_TYPES.values():
                raise EngineError("missing_weights", f"{path.name} is quantised as {layer_format!r} ({key}), "
                                                     f"which this engine cannot load: {USE_INSTEAD}")


def gemma3_text_config(shapes: dict, source: Path):
    """Gemma 3's text config for weights of these shapes (safetensors names): the sizes read off them, the
    rest Gemma 3 12B's."""
    from transformers import Gemma3TextConfig

    first = f"{TEXT_PREFIX}layers.0."
    try:
        vocab, hidden = shapes[EMBEDDINGS]
        head_dim = shapes[first + "self_attn.q_norm.weight"][0]
        heads = shapes[first + "self_attn.q_proj.weight"][0] // head_dim
        kv_heads = shapes[first + "self_attn.k_proj.weight"][0] // head_dim
        intermediate = shapes[first + "mlp.gate_proj.weight"][0]
    except (KeyError, ValueError, IndexError, ZeroDivisionError):
        raise EngineError("corrupt_weights", f"{source}: the first layer is not a Gemma 3 layer (no q_norm, "
                                             f"q_proj, k_proj or gate_proj of the expected shape): "
                                             f"{USE_INSTEAD}") from None
    layer_numbers = [re.match(rf"{re.escape(TEXT_PREFIX)}layers\.(\d+)\.", k) for k in shapes]
    layers = 1 + max(int(m.group(1)) for m in layer_numbers if m)
    try:
        return Gemma3TextConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=intermediate,
                                num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=kv_heads,
                                head_dim=head_dim, **GEMMA3_12B_TEXT_SETTINGS)
    except ValueError as err:
        raise EngineError("corrupt_weights", f"{source}: its sizes are not a Gemma 3 model's ({err}): "
                                             f"{USE_INSTEAD}") from None


def _load_single_file(path: Path, device: str, dtype):
    """ComfyUI's file as ``Gemma3TextModel``, built without storage and filled strictly, tensor by tensor."""
    from accelerate import init_empty_weights
    from safetensors import safe_open
    from transformers import Gemma3TextModel

    _, header, spm = _inspect_single_file(path)
    config = gemma3_text_config(header.shapes, path)
    tokenizer = gemma_tokenizer(spm)
    tensors = {}
    with safe_open(str(path), framework="pt", device=device) as f:
        for key in _text_weights(header):
            tensor = f.get_tensor(key)
            if header.dtypes[key] in FP8_TYPES:
                tensor = dequantised(tensor, f.get_tensor(_scale_key(header, key)), dtype)
            tensors[key.removeprefix(TEXT_PREFIX)] = tensor.to(dtype)
    with init_empty_weights():  # parameters without storage, filled below; the rotary buffers are real
        model = Gemma3TextModel(config)
    detail = mismatch(model.state_dict(), tensors, TEXT_PREFIX)
    if detail:
        raise EngineError("corrupt_weights", f"{path}: the weights do not match Gemma 3 ({detail}): {USE_INSTEAD}")
    try:
        model.load_state_dict(tensors, strict=True, assign=True)
    except RuntimeError as err:  # a shape that does not fit the others
        first = str(err).strip().splitlines()[-1].strip()
        raise EngineError("corrupt_weights", f"{path}: the weights do not fit one Gemma 3 model ({first}): "
                                             f"{USE_INSTEAD}") from None
    return tokenizer, model.to(device)


def _count(shape) -> int:
    count = 1
    for size in shape:
        count *= size
    return count


def _dominant_type(dtypes: dict, nbytes: dict, keys=None) -> str:
    """The safetensors type holding most of the bytes, lower-cased ("bf16")."""
    totals = {}
    for key in dtypes if keys is None else keys:
        totals[dtypes[key]] = totals.get(dtypes[key], 0) + nbytes[key]
    return max(totals, key=totals.get).lower() if totals else "bf16"


# --- the tokenizer from SentencePiece's model ------------------------------------------------------------------

# SentencePiece's ModelProto (sentencepiece_model.proto), the few fields read here: pieces (1) each with
# piece (1), score (2) and type (3); trainer_spec (2) with model_type (3: 2 is BPE), byte_fallback (35),
# unk/bos/eos/pad ids (40–43); normalizer_spec (3) with precompiled_charsmap (2), add_dummy_prefix (3),
# remove_extra_whitespaces (4).
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6
BPE = 2
GEMMA_SPECIALS = ("<pad>", "<eos>", "<bos>", "<unk>")  # ids 0–3 in every Gemma tokenizer


@dataclass(frozen=True)
class SentencePieceModel:
    pieces: tuple  # (piece, score, type) by id
    model_type: int
    byte_fallback: bool
    special_ids: dict  # "unk", "bos", "eos", "pad" → id (-1: none)
    add_dummy_prefix: bool
    remove_extra_whitespaces: bool
    normalization_table: bytes  # precompiled_charsmap: empty for the identity (Gemma's)


def read_sentencepiece(model: bytes) -> SentencePieceModel:
    """The parts of a SentencePiece model file (a protobuf message) a Gemma tokenizer is built from; raises
    ValueError when it is not one."""
    pieces, trainer, normalizer = [], {}, {}
    for field, value in _protobuf_fields(model):
        if field == 1:
            entry = dict(_protobuf_fields(value))
            score = struct.unpack("<f", entry[2])[0] if 2 in entry else 0.0
            pieces.append((entry.get(1, b"").decode("utf-8"), score, entry.get(3, NORMAL)))
        elif field == 2:
            trainer = dict(_protobuf_fields(value))
        elif field == 3:
            normalizer = dict(_protobuf_fields(value))
    if not pieces:
        raise ValueError("no pieces")
    ids = {name: _int32(trainer.get(number, default))
           for name, number, default in (("unk", 40, 0), ("bos", 41, 1), ("eos", 42, 2), ("pad", 43, -1))}
    return SentencePieceModel(tuple(pieces), trainer.get(3, 1), bool(trainer.get(35, 0)), ids,
                              bool(normalizer.get(3, 1)), bool(normalizer.get(4, 1)), normalizer.get(2, b""))


def _protobuf_fields(data: bytes):
    """(field number, value) of one protobuf message: ints for varints, bytes for everything else."""
    at = 0
    while at < len(data):
        key, at = _varint(data, at)
        wire = key & 7
        if wire == 0:
            value, at = _varint(data, at)
        elif wire == 2:
            length, at = _varint(data, at)
            value, at = data[at:at + length], at + length
        elif wire in (1, 5):
            width = 8 if wire == 1 else 4
            value, at = data[at:at + width], at + width
        else:
            raise ValueError(f"wire type {wire}")
        if at > len(data):
            raise ValueError("cut short")
        yield key >> 3, value


def _varint(data: bytes, at: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if at >= len(data):
            raise ValueError("cut short")
        byte = data[at]
        value |= (byte & 0x7F) << shift
        at, shift = at + 1, shift + 7
        if byte < 0x80:
            return value, at


def _int32(value: int) -> int:
    return value - (1 << 64) if value >= 1 << 63 else value


def read_gemma_sentencepiece(model: bytes, source: Path) -> SentencePieceModel:
    """The SentencePiece model ``model`` (from ``source``), refused unless it is a tokenizer of Gemma's kind:
    BPE over the raw text (spaces become "▁", nothing added in front or folded, no normalisation table),
    bytes for what the vocabulary lacks, <pad> <eos> <bos> <unk> first. That is the tokenizer transformers'
    GemmaTokenizer reproduces."""
    try:
        spm = read_sentencepiece(model)
    except (ValueError, TypeError, AttributeError, struct.error) as err:  # bytes of something else
        raise EngineError("corrupt_weights", f"{source}: its tokenizer is not a SentencePiece model ({err}): "
                                             "download it again") from None
    differences = [what for what, wrong in (
        ("not BPE", spm.model_type != BPE), ("no byte fallback", not spm.byte_fallback),
        ("a dummy prefix", spm.add_dummy_prefix), ("whitespace folding", spm.remove_extra_whitespaces),
        ("a normalisation table", bool(spm.normalization_table)),
        ("other special tokens", tuple(piece for piece, _, _ in spm.pieces[:4]) != GEMMA_SPECIALS or
         [spm.special_ids[name] for name in ("pad", "eos", "bos", "unk")] != [0, 1, 2, 3])) if wrong]
    if differences:
        raise EngineError("corrupt_weights", f"{source}: its tokenizer is not Gemma 3's ({', '.join(differences)}):"
                                             f" {USE_INSTEAD}")
    return spm


def tokenizer_from_sentencepiece(model: bytes, source: Path):
    """transformers' ``GemmaTokenizer`` (tokenizers' BPE with byte fallback) built from SentencePiece's
    model file. Reading the file needs neither sentencepiece nor protobuf, which transformers' own
    conversion would."""
    return gemma_tokenizer(read_gemma_sentencepiece(model, source))


def gemma_tokenizer(spm: SentencePieceModel):
    """transformers' ``GemmaTokenizer`` for a SentencePiece model :func:`read_gemma_sentencepiece` accepted."""
    from tokenizers import AddedToken
    from transformers import GemmaTokenizer

    vocab = {piece: index for index, (piece, _, _) in enumerate(spm.pieces)}
    tokenizer = GemmaTokenizer(vocab=vocab, merges=_merges(spm.pieces, vocab), pad_token="<pad>", eos_token="<eos>",
                               bos_token="<bos>", unk_token="<unk>", mask_token="<mask>" if "<mask>" in vocab else None,
                               add_bos_token=True, add_eos_token=False, padding_side="left")
    # SentencePiece matches its user-defined pieces whole, in the text as it is normalised; control pieces
    # are the special tokens.
    tokenizer.add_tokens([AddedToken(piece, special=kind == CONTROL, normalized=kind == USER_DEFINED)
                          for piece, _, kind in spm.pieces if kind in (CONTROL, USER_DEFINED)])
    return tokenizer


def _merges(pieces, vocab: dict) -> list[tuple[str, str]]:
    """BPE merges in SentencePiece's order: at each step its BPE joins the neighbouring pair that makes the
    normal piece with the highest score (ties: the lower id), so every split of a piece into two pieces is a
    merge, ranked by the joined piece's score."""
    ranked = []
    for index, (piece, score, kind) in enumerate(pieces):
        if kind != NORMAL:
            continue
        for cut in range(1, len(piece)):
            left, right = piece[:cut], piece[cut:]
            if left in vocab and right in vocab:
                ranked.append((-score, index, cut, left, right))
    ranked.sort()
    return [(left, right) for *_, left, right in ranked]
