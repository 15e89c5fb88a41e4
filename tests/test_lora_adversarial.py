"""Bad and hostile LoRA files: each ends in one LoraError sentence naming the file, never a traceback nor
weights that make black images. Named cases per kind of damage, then hypothesis fuzzing of whole files
(keys, dtypes, shapes, values, adapter metadata) and of raw headers. Fast: no model is exported."""

import json
import math
import struct

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import array_shapes, arrays
from safetensors.numpy import save_file

from edgesd.errors import InvalidInputError
from edgesd.lora import MAX_ALPHA, MAX_MERGED, MAX_WEIGHT, LoraError, LoraMerge, add_delta, read_lora

MODULE = "lora_unet_down_blocks_0_attentions_0_proj_in"
DOWN, UP, ALPHA = f"{MODULE}.lora_down.weight", f"{MODULE}.lora_up.weight", f"{MODULE}.alpha"
NAME = "down_blocks_0_attentions_0_proj_in"
DOTTED = "down_blocks.0.attentions.0.proj_in"  # the same module in diffusers' format
NAN, INF = float("nan"), float("inf")


def layer(down=(2, 4), up=(4, 2), dtype=np.float32, alpha=None) -> dict:
    rng = np.random.default_rng(0)
    tensors = {DOWN: rng.standard_normal(down).astype(dtype), UP: rng.standard_normal(up).astype(dtype)}
    if alpha is not None:
        tensors[ALPHA] = np.asarray(alpha, dtype)
    return tensors


def diffusers_layer(module=DOTTED) -> dict:
    return {f"unet.{module}.lora_A.weight": np.ones((2, 4), np.float32),
            f"unet.{module}.lora_B.weight": np.ones((4, 2), np.float32)}


def write(folder, tensors, metadata=None, name="bad.safetensors"):
    save_file(tensors, folder / name, metadata=metadata)
    return folder / name


def write_raw(folder, header, data=b"", length=None, name="raw.safetensors"):
    """A file of safetensors' layout: 8-byte little-endian header length, header, data; anything goes."""
    header = header if isinstance(header, bytes) else json.dumps(header).encode()
    (folder / name).write_bytes(struct.pack("<Q", len(header) if length is None else length) + header + data)
    return folder / name


def refused(path, match: str, weight=1.0) -> str:
    with pytest.raises(LoraError, match=match) as error:
        read_lora(path, weight)
    message = str(error.value)
    assert path.name in message and message.isprintable(), message
    return message


def test_lora_error_is_an_invalid_input_error():
    assert issubclass(LoraError, InvalidInputError) and issubclass(LoraError, ValueError)


def test_a_sound_file_reads_as_written(tmp_path):
    """The baseline the refusals below differ from: the same helpers make a file that is read, with its values."""
    tensors = layer(alpha=1.5)
    lora = read_lora(write(tmp_path, tensors), -2.0)
    read = lora.layers["unet"][NAME]
    assert np.array_equal(read.down, tensors[DOWN]) and np.array_equal(read.up, tensors[UP]) and read.alpha == 1.5
    np.testing.assert_allclose(read.delta(lora.weight), -2.0 * 1.5 / 2 * tensors[UP] @ tensors[DOWN], rtol=1e-6)


# 1. NaN/inf in tensors and alphas
@pytest.mark.parametrize("value", [NAN, INF, -INF])
@pytest.mark.parametrize("key", [DOWN, UP, ALPHA])
@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
def test_nan_or_inf_in_a_tensor_is_refused_by_key(tmp_path, key, value, dtype):
    tensors = layer(dtype=dtype, alpha=2.0)
    tensors[key].reshape(-1)[-1] = value
    refused(write(tmp_path, tensors), rf"{key} holds NaN/inf values")


def test_float64_values_beyond_float32_are_refused(tmp_path):
    tensors = layer(dtype=np.float64)
    tensors[UP][0, 0] = 1e300  # finite, but inf in float32, which deltas are computed in
    refused(write(tmp_path, tensors), rf"{UP} holds NaN/inf values .*float32")


@pytest.mark.parametrize("config,field", [
    ('{"unet.lora_alpha": NaN}', "unet.lora_alpha"),
    ('{"unet.lora_alpha": Infinity}', "unet.lora_alpha"),
    ('{"unet.lora_alpha": -Infinity}', "unet.lora_alpha"),
    ('{"unet.alpha_pattern": {"proj_in": NaN}}', r"unet.alpha_pattern\['proj_in'\]"),
    ('{"text_encoder.alpha_pattern": {"q_proj": Infinity}}', r"text_encoder.alpha_pattern\['q_proj'\]"),
])
def test_nan_or_inf_alphas_in_metadata_are_refused(tmp_path, config, field):
    text = "lora_te_text_model_encoder_layers_0_self_attn_q_proj"
    tensors = {**layer(), f"{text}.lora_down.weight": np.ones((2, 4), np.float32),
               f"{text}.lora_up.weight": np.ones((4, 2), np.float32)}
    refused(write(tmp_path, tensors, {"lora_adapter_metadata": config}), rf"{field} is .*finite number")


# 2. bounds of weights and alphas
@pytest.mark.parametrize("weight", [1e308, -1e308, MAX_WEIGHT * 1.01, -MAX_WEIGHT * 1.01, NAN, INF, -INF, "0.8", None,
                                    True, [1.0]])
def test_weights_beyond_the_bound_or_not_numbers_are_refused(tmp_path, weight):
    refused(write(tmp_path, layer()), rf"weight must be a finite number within ±{MAX_WEIGHT:g}", weight)


@pytest.mark.parametrize("weight", [-MAX_WEIGHT, -1.5, 0, 0.8, np.float32(2.5), MAX_WEIGHT])
def test_weights_within_the_bound_are_kept_negative_ones_too(tmp_path, weight):
    assert read_lora(write(tmp_path, layer()), weight).weight == float(weight)


@pytest.mark.parametrize("alpha", [MAX_ALPHA * 10, -MAX_ALPHA * 10, 1e30])
def test_alpha_tensors_beyond_the_bound_are_refused(tmp_path, alpha):
    path = write(tmp_path, layer(dtype=np.float64, alpha=alpha))
    refused(path, rf"{ALPHA} is .*alphas are within ±{MAX_ALPHA:,.0f}")


@pytest.mark.parametrize("alpha", ['"8"', "[8]", '{"a": 8}', "true", "null", str(MAX_ALPHA * 10), "1e400",
                                   "1" + "0" * 400])
@pytest.mark.parametrize("where", ["unet.lora_alpha", "unet.alpha_pattern"])
def test_metadata_alphas_must_be_numbers_within_the_bound(tmp_path, alpha, where):
    config = f'{{"{where}": {alpha}}}' if where.endswith("lora_alpha") else f'{{"{where}": {{"proj_in": {alpha}}}}}'
    message = refused(write(tmp_path, layer(), {"lora_adapter_metadata": config}), "lora_adapter_metadata's unet")
    assert where in message


@pytest.mark.parametrize("alpha", [-MAX_ALPHA, -3, 0, 3.5, MAX_ALPHA])
def test_alphas_within_the_bound_are_kept(tmp_path, alpha):
    from_tensor = read_lora(write(tmp_path, layer(alpha=alpha), name="t.safetensors")).layers["unet"][NAME].alpha
    config = {"lora_adapter_metadata": json.dumps({"unet.lora_alpha": 1, "unet.alpha_pattern": {"proj_in": alpha}})}
    from_metadata = read_lora(write(tmp_path, diffusers_layer(), config, name="m.safetensors")).layers["unet"]
    from_metadata = from_metadata[DOTTED].alpha
    assert from_tensor == from_metadata == alpha


# 3. tensors that are not floats
@pytest.mark.parametrize("dtype,name", [(np.int8, "int8"), (np.int32, "int32"), (np.int64, "int64"), (np.uint8, "uint8"),
                                        (np.uint16, "uint16"), (np.bool_, "bool"), (np.complex64, "complex64")])
@pytest.mark.parametrize("key", [DOWN, UP, ALPHA])
def test_tensors_that_are_not_floats_are_refused_by_name(tmp_path, key, dtype, name):
    tensors = layer(alpha=1.0)
    tensors[key] = tensors[key].astype(dtype)
    refused(write(tmp_path, tensors), rf"{key} holds {name} values; LoRA weights are floats")


def test_dtypes_numpy_lacks_are_refused_by_name(tmp_path):
    header = {DOWN: {"dtype": "F8_E4M3", "shape": [2, 4], "data_offsets": [0, 8]},
              UP: {"dtype": "F32", "shape": [4, 2], "data_offsets": [8, 40]}}
    refused(write_raw(tmp_path, header, bytes(40)), rf"{DOWN} holds float8_e4m3 values")


def bf16(values: np.ndarray) -> bytes:
    return (np.asarray(values, np.float32).view(np.uint32) >> 16).astype("<u2").tobytes()


def test_bf16_reads_without_torch_and_nan_in_it_is_refused(tmp_path):
    down, up = np.array([[1.5, -2, 0.25, 3]], np.float32), np.array([[1], [2], [-4], [0.5]], np.float32)
    header = {DOWN: {"dtype": "BF16", "shape": [1, 4], "data_offsets": [0, 8]},
              UP: {"dtype": "BF16", "shape": [4, 1], "data_offsets": [8, 16]}}
    read = read_lora(write_raw(tmp_path, header, bf16(down) + bf16(up))).layers["unet"][NAME]
    assert read.down.dtype == np.float32 and np.array_equal(read.down, down) and np.array_equal(read.up, up)
    refused(write_raw(tmp_path, header, bf16(down) + bf16(np.array([[1], [NAN], [0], [0]]))), rf"{UP} holds NaN/inf")


# 4. malformed files and headers
ENTRY = {"dtype": "F32", "shape": [2, 4], "data_offsets": [0, 32]}
MALFORMED = {
    "empty": b"",
    "seven bytes": b"1234567",
    "length only": struct.pack("<Q", 0),
    "huge length": struct.pack("<Q", 2**63) + b"{}",
    "negative length": struct.pack("<q", -2) + b"{}",
    "length beyond the file": struct.pack("<Q", 1000) + b"{}",
    "not JSON": struct.pack("<Q", 5) + b"{nope",
    "not UTF-8": struct.pack("<Q", 2) + b"\xff\xfe",
    "deeply nested": struct.pack("<Q", 20000) + b"[" * 10000 + b"]" * 10000,
}
MALFORMED_HEADERS = {
    "a list": [ENTRY],
    "a number": 3,
    "a string": "x",
    "null": None,
    "an entry that is a number": {DOWN: 1},
    "an entry that is a list": {DOWN: [ENTRY]},
    "no dtype": {DOWN: {"shape": [2, 4], "data_offsets": [0, 32]}},
    "no shape": {DOWN: {"dtype": "F32", "data_offsets": [0, 32]}},
    "no data_offsets": {DOWN: {"dtype": "F32", "shape": [2, 4]}},
    "an unknown dtype": {DOWN: {**ENTRY, "dtype": "F33"}},
    "offsets beyond the data": {DOWN: {**ENTRY, "data_offsets": [0, 64]}},
    "offsets reversed": {DOWN: {**ENTRY, "data_offsets": [32, 0]}},
    "negative offsets": {DOWN: {**ENTRY, "data_offsets": [-32, 0]}},
    "three offsets": {DOWN: {**ENTRY, "data_offsets": [0, 16, 32]}},
    "negative shape": {DOWN: {**ENTRY, "shape": [-2, -4]}},
    "a shape too large for its bytes": {DOWN: {**ENTRY, "shape": [4, 4]}},
    "a shape that is a string": {DOWN: {**ENTRY, "shape": "2,4"}},
    "a bf16 count that does not match the shape": {DOWN: {**ENTRY, "dtype": "BF16", "shape": [2, 4]}},
    "a bf16 count that does not match the shape, shorter": {DOWN: {**ENTRY, "dtype": "BF16", "shape": [2, 3]}},
    "bytes left over": {DOWN: {**ENTRY, "data_offsets": [0, 16], "shape": [2, 2]}},
    "metadata that is not strings": {"__metadata__": {"lora_adapter_metadata": {"unet.lora_alpha": 8}}, DOWN: ENTRY},
    "metadata that is a list": {"__metadata__": ["x"], DOWN: ENTRY},
    "no tensors": {},
}


@pytest.mark.parametrize("case", list(MALFORMED) + list(MALFORMED_HEADERS))
def test_malformed_files_are_refused(tmp_path, case):
    path = tmp_path / "broken.safetensors"
    if case in MALFORMED:
        path.write_bytes(MALFORMED[case])
    else:
        write_raw(tmp_path, MALFORMED_HEADERS[case], bytes(32 if MALFORMED_HEADERS[case] else 0), name=path.name)
    refused(path, "cannot be read as safetensors" if case != "no tensors" else "has no layers")


# 5. shapes
@pytest.mark.parametrize("down,up,match", [
    ((0, 4), (4, 0), r"lora_down.weight has shape \(0, 4\)"),  # rank 0
    ((2, 0), (4, 2), r"lora_down.weight has shape \(2, 0\)"),
    ((2, 4), (0, 2), r"lora_up.weight has shape \(0, 2\)"),
    ((), (), "has shape \\(\\)"),  # scalars
    ((2,), (2,), r"has shape \(2,\)"),
    ((2, 4, 3), (4, 2, 1), r"has shape \(2, 4, 3\)"),
    ((2, 4, 3, 3, 1), (4, 2, 1, 1, 1), r"has shape \(2, 4, 3, 3, 1\)"),
    ((2, 4), (4, 3), "do not fit together"),
    ((3, 4, 3, 3), (4, 2, 1, 1), "do not fit together"),
    ((2, 4, 3, 3), (4, 2, 3, 3), "do not fit together"),  # a conv up's kernel is 1x1
    ((2, 4, 3, 3), (4, 2, 1, 3), "do not fit together"),
])
def test_shapes_that_no_layer_has_are_refused(tmp_path, down, up, match):
    refused(write(tmp_path, layer(down, up)), match)


@pytest.mark.parametrize("alpha_shape", [(2,), (0,), (1, 2)])
def test_an_alpha_that_is_not_one_number_is_refused(tmp_path, alpha_shape):
    tensors = {**layer(), ALPHA: np.ones(alpha_shape, np.float32)}
    refused(write(tmp_path, tensors), rf"{ALPHA} should hold one number")


@pytest.mark.parametrize("down,up,delta", [((2, 4), (4, 2), (4, 4)), ((2, 4, 3, 3), (5, 2, 1, 1), (5, 4, 3, 3)),
                                           ((2, 4, 1, 1), (5, 2), (5, 4, 1, 1)), ((1, 1), (1, 1), (1, 1))])
def test_shapes_layers_have_are_read(tmp_path, down, up, delta):
    read = read_lora(write(tmp_path, layer(down, up))).layers["unet"][NAME]
    assert read.shape == delta and read.delta(1.0).shape == delta


# 6. adapter metadata
@pytest.mark.parametrize("config,match", [
    ("{not json", "not JSON"),
    ("[1, 2]", "not JSON of an object"),
    ("3", "not JSON of an object"),
    ('"unet.lora_alpha"', "not JSON of an object"),
    ("null", "not JSON of an object"),
    ("[" * 100000, "not JSON"),  # deeper than Python's recursion limit
    ('{"unet.alpha_pattern": [1]}', r"unet.alpha_pattern is \[1\]: input should be a valid dictionary"),
    ('{"unet.alpha_pattern": "proj_in"}', "unet.alpha_pattern is 'proj_in': input should be a valid dictionary"),
    ('{"unet.alpha_pattern": {"proj_in": "4"}}', r"unet.alpha_pattern\['proj_in'\] is '4': input should be a valid number"),
    ('{"unet.lora_alpha": "8"}', "unet.lora_alpha is '8': input should be a valid number"),
    ('{"unet.lora_alpha": ' + json.dumps("x" * 100) + "}", "unet.lora_alpha is 'xxxx.*\\.\\.\\.: input"),  # kept short
    ('{"unet.use_rslora": "yes"}', "unet.use_rslora is 'yes': input should be a valid boolean"),
    ('{"unet.use_rslora": 1}', "unet.use_rslora is 1: input should be a valid boolean"),
    ('{"unet.use_rslora": true}', "rank-stabilized"),
])
def test_odd_adapter_metadata_is_refused(tmp_path, config, match):
    refused(write(tmp_path, layer(), {"lora_adapter_metadata": config}), match)


def test_sound_adapter_metadata_is_applied_and_other_fields_ignored(tmp_path):
    config = {"unet.r": 2, "unet.lora_alpha": 4, "unet.alpha_pattern": {"to_q": 16, "attentions.0.proj_in": 0.5},
              "unet.use_rslora": False, "unet.target_modules": ["proj_in"], "unet.something_new": {"x": [1]},
              "text_encoder.lora_alpha": "ignored: no text encoder layers"}
    tensors = layer() | diffusers_layer() | diffusers_layer("down_blocks.0.attentions.0.proj_out")
    lora = read_lora(write(tmp_path, tensors, {"lora_adapter_metadata": json.dumps(config), "format": "pt"}))
    alphas = {name: read.alpha for name, read in lora.layers["unet"].items()}
    assert alphas == {NAME: 4, DOTTED: 0.5, "down_blocks.0.attentions.0.proj_out": 4}


# merging: finite values can still multiply to inf, or beyond float16
@pytest.mark.parametrize("value,base_dtype", [(1e20, np.float32), (3e38, np.float32), (200.0, np.float16)])
def test_a_delta_that_overflows_the_weight_is_refused_when_merged(tmp_path, value, base_dtype):
    tensors = {DOWN: np.full((2, 4), value, np.float32), UP: np.full((4, 2), value, np.float32)}
    merge = LoraMerge("unet", [read_lora(write(tmp_path, tensors))])
    [(module, delta)] = merge.deltas({NAME: (4, 4)})
    with pytest.raises(LoraError, match=rf"{module} beyond ±{MAX_MERGED:g}"):
        add_delta(np.zeros((4, 4), base_dtype), delta, False, module)


def test_a_delta_within_float16_is_merged(tmp_path):
    tensors = {DOWN: np.full((2, 4), 10, np.float32), UP: np.full((4, 2), 10, np.float32)}
    [(module, delta)] = LoraMerge("unet", [read_lora(write(tmp_path, tensors), 2)]).deltas({NAME: (4, 4)})
    merged = add_delta(np.ones((4, 4), np.float16), delta, True, module)
    assert merged.dtype == np.float16 and np.all(merged == 1 + 2 * 200)


# the CLI's FILE:WEIGHT
@pytest.mark.parametrize("weight", ["1e308", "-1e308", "nan", "inf", "-inf", "1e400", "101"])
def test_cli_weights_beyond_the_bound_are_refused(tmp_path, weight):
    from edgesd.cli import parse_lora

    path = write(tmp_path, layer(), name="style.safetensors")
    with pytest.raises(LoraError, match=r"style.safetensors: its weight must be a finite number within ±100"):
        parse_lora(f"{path}:{weight}")
    assert parse_lora(f"{path}:-0.5").weight == -0.5


# fuzzing
DTYPES = [np.float32, np.float32, np.float16, np.float64, np.int8, np.int32, np.uint8, np.bool_]
MODULES = ["down_blocks_0_attentions_0_proj_in", "conv_in", "a", "input_blocks_1_0_in_layers_2"]
TEMPLATES = [  # (down, up, alpha) of one layer, in the formats read
    ("lora_unet_{}.lora_down.weight", "lora_unet_{}.lora_up.weight", "lora_unet_{}.alpha"),
    ("lora_te_{}.lora_down.weight", "lora_te_{}.lora_up.weight", "lora_te_{}.alpha"),
    ("unet.{}.lora_A.weight", "unet.{}.lora_B.weight", "unet.{}.alpha"),
    ("text_encoder.{}.lora.down.weight", "text_encoder.{}.lora.up.weight", "text_encoder.{}.alpha"),
    ("unet.{}.lora_linear_layer.down.weight", "unet.{}.lora_linear_layer.up.weight", "unet.{}.alpha"),
    ("lora_te2_{}.lora_down.weight", "lora_te2_{}.lora_up.weight", "lora_te2_{}.alpha"),
]
JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=4),
                    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
                    max_leaves=8)
ADAPTER_METADATA = st.one_of(
    JSON.map(json.dumps),
    st.text(max_size=12),
    st.fixed_dictionaries({}, optional={
        "unet.lora_alpha": JSON, "text_encoder.lora_alpha": JSON, "unet.use_rslora": JSON, "unet.r": JSON,
        "unet.alpha_pattern": JSON | st.dictionaries(st.sampled_from(MODULES + ["proj_in", "in_layers_2"]), JSON)}
    ).map(json.dumps),
)


@st.composite
def tensor(draw, shape, clean=False):
    dtype = np.dtype(draw(st.sampled_from(DTYPES[:4] if clean else DTYPES)))
    if dtype.kind != "f":
        return draw(arrays(dtype, shape))
    width = 8 * dtype.itemsize
    values = st.floats(-2, 2, width=width)
    return draw(arrays(dtype, shape, elements=values if clean else st.one_of(values, st.floats(width=width))))


@st.composite
def lora_contents(draw):
    """Tensors and metadata of a LoRA file: half of them clean (float, finite, fitting shapes, numeric
    alphas) so that reading succeeds often enough to be checked too, half with anything going."""
    clean = draw(st.booleans())
    tensors, least = {}, 1 if clean else 0
    for module in draw(st.lists(st.sampled_from(MODULES), min_size=least, max_size=3, unique=True)):
        rank, inputs, outputs = (draw(st.integers(least, 3)) for _ in range(3))
        conv = draw(st.booleans())
        shapes = ((rank, inputs, 3, 3), (outputs, rank, 1, 1), ()) if conv else ((rank, inputs), (outputs, rank), ())
        for template, shape in zip(draw(st.sampled_from(TEMPLATES[:5] if clean else TEMPLATES)), shapes):
            if draw(st.integers(0, 9)) == 0 and (not clean or shape == ()):
                continue  # a part left out
            if draw(st.integers(0, 4)) == 0 and not clean:
                shape = draw(array_shapes(min_dims=0, max_dims=4, min_side=0, max_side=4))
            tensors[template.format(module)] = draw(tensor(shape, clean))
    if not clean:
        junk = st.text(min_size=1, max_size=16).filter(lambda key: key != "__metadata__")
        junk_tensor = array_shapes(min_dims=0, max_dims=2, max_side=3).flatmap(tensor)
        tensors |= draw(st.dictionaries(junk, junk_tensor, max_size=1))
    numbers = st.floats(-MAX_ALPHA, MAX_ALPHA) | st.integers(-100, 100)
    config = st.fixed_dictionaries({}, optional={"unet.lora_alpha": numbers, "text_encoder.lora_alpha": numbers,
                                                 "unet.alpha_pattern": st.dictionaries(st.sampled_from(MODULES), numbers)})
    adapter = config.map(json.dumps) if clean else ADAPTER_METADATA
    metadata = draw(st.one_of(st.none(), st.fixed_dictionaries({"lora_adapter_metadata": adapter},
                                                                optional={"format": st.text(max_size=4)})))
    return tensors, metadata


def assert_read_soundly_or_refused(path):
    """read_lora's only outcomes: a LoraError sentence naming the file, or layers that merge into finite weights."""
    try:
        lora = read_lora(path)
    except LoraError as error:
        assert path.name in str(error) and str(error).isprintable(), str(error)
        return
    for layers in lora.layers.values():
        for name, layer in layers.items():
            for matrix in (layer.down, layer.up):
                assert matrix.dtype.kind == "f" and matrix.ndim in (2, 4) and min(matrix.shape) >= 1
                assert np.isfinite(matrix.astype(np.float32)).all()
            assert layer.up.shape[1] == layer.down.shape[0] and all(side == 1 for side in layer.up.shape[2:])
            assert layer.alpha is None or (type(layer.alpha) is float and abs(layer.alpha) <= MAX_ALPHA)
            with np.errstate(over="ignore", invalid="ignore"):
                delta = layer.delta(MAX_WEIGHT)
            try:
                merged = add_delta(np.zeros(layer.shape, np.float32), delta, False, name)
            except LoraError:
                continue
            assert np.isfinite(merged).all() and merged.shape == layer.shape


FUZZ = settings(max_examples=200, deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


@FUZZ
@given(contents=lora_contents())
def test_fuzzed_files_are_read_soundly_or_refused(tmp_path_factory, contents):
    tensors, metadata = contents
    path = tmp_path_factory.getbasetemp() / "fuzz.safetensors"
    save_file(tensors, path, metadata=metadata)
    assert_read_soundly_or_refused(path)


SIZES = {"F16": 2, "BF16": 2, "F32": 4, "F64": 8, "I8": 1, "I32": 4, "U8": 1, "BOOL": 1, "F8_E4M3": 1, "I64": 8}


@st.composite
def raw_files(draw):
    """8-byte length + header + data: headers of random bytes or JSON, or of entries whose offsets usually
    fit their dtype and shape (so that some pass safetensors' checks and reach edgesd's)."""
    kind = draw(st.sampled_from(["bytes", "json", "entries"]))
    if kind == "bytes":
        header = draw(st.binary(max_size=40))
    elif kind == "json":
        header = json.dumps(draw(JSON)).encode()
    else:
        entries, offset = {}, 0
        keys = st.sampled_from([template.format(module) for template in sum(TEMPLATES[:3], ()) for module in MODULES[:2]])
        for key in draw(st.lists(keys, max_size=4, unique=True)):
            dtype = draw(st.sampled_from(list(SIZES)))
            shape = draw(st.lists(st.integers(0, 3), max_size=4))
            size = SIZES[dtype] * math.prod(shape)
            offsets = [offset, offset + size] if draw(st.integers(0, 5)) else \
                draw(st.lists(st.integers(-1, 80), max_size=3))
            entries[key] = {"dtype": dtype, "shape": shape, "data_offsets": offsets}
            offset += size
        header = json.dumps(entries).encode()
    length = len(header) if draw(st.integers(0, 3)) else draw(st.integers(0, 2**64 - 1))
    data = draw(st.binary(max_size=80)) if kind != "entries" or not draw(st.integers(0, 3)) else \
        draw(st.binary(min_size=offset, max_size=offset))
    if kind == "entries" and draw(st.booleans()):  # float values, NaN/inf among them
        data = draw(arrays(np.float32, offset // 4, elements=st.floats(width=32))).tobytes() + bytes(offset % 4)
    return struct.pack("<Q", length) + header + data


@FUZZ
@given(content=raw_files())
def test_fuzzed_raw_headers_are_read_soundly_or_refused(tmp_path_factory, content):
    path = tmp_path_factory.getbasetemp() / "raw-fuzz.safetensors"
    path.write_bytes(content)
    assert_read_soundly_or_refused(path)
