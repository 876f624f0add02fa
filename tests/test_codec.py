import io

import msgpack
import msgpack_numpy
import numpy as np
import pytest

from memodb.errors import DatabaseError
from memodb.store.codec import canonical_arrays, decode_value, encode_value

DTYPES = [np.float16, np.float32, np.int32, np.int64, np.uint8, np.bool_]
SHAPES = [(0,), (3,), (0, 342), (4, 342), (2, 8, 8)]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
def test_bytes_equal_msgpack_numpy_and_round_trip(dtype, shape):
    arr = (np.arange(int(np.prod(shape))) % 7).reshape(shape).astype(dtype)
    value = {"features": arr, "frame_idxs": np.arange(shape[0], dtype=np.int32)}
    ours = encode_value(value)
    assert ours == msgpack.packb(value, default=msgpack_numpy.encode, use_bin_type=True)
    back = decode_value(ours)
    assert list(back) == ["features", "frame_idxs"]
    assert back["features"].dtype == arr.dtype and back["features"].shape == shape
    np.testing.assert_array_equal(back["features"], arr)
    # what the original readers do with it
    theirs = msgpack.unpackb(ours, raw=False, object_hook=msgpack_numpy.decode)
    np.testing.assert_array_equal(theirs["features"], arr)


def test_decode_keeps_float16_without_copy():
    value = encode_value({"features": np.ones((5, 342), np.float16)})
    arr = decode_value(value)["features"]
    assert arr.dtype == np.float16 and not arr.flags.writeable  # a view over the bytes


def test_old_compressed_npz_values_are_read():
    buf = io.BytesIO()
    np.savez_compressed(buf, features=np.ones((2, 3), np.float16), conf=np.ones(2, np.float16))
    out = decode_value(buf.getvalue())
    assert out["features"].shape == (2, 3)


def test_canonical_arrays_dtypes_and_order():
    out = canonical_arrays({"frame_idxs": np.array([1.0, 3000.0], np.float16),
                            "confidence": np.ones(2, np.float32), "zz": np.ones(2, np.int64),
                            "features": np.ones((2, 4), np.float64)})
    assert list(out) == ["features", "confidence", "frame_idxs", "zz"]
    assert out["features"].dtype == np.float16 and out["frame_idxs"].dtype == np.int32
    assert out["frame_idxs"].tolist() == [1, 3000]


@pytest.mark.parametrize("junk", [b"", b"\x00\x01garbage", b"PK\x03\x04broken",
                                  msgpack.packb([1, 2]), msgpack.packb({"a": 1})])
def test_garbage_raises_named_error(junk):
    with pytest.raises(DatabaseError):
        decode_value(junk)


def test_fast_decoder_equals_full_decoder_and_never_trusts_a_wrong_header():
    from memodb.store.codec import FastDecoder

    fast = FastDecoder()
    rng = np.random.default_rng(0)
    for n in [0, 1, 5, 5, 36, 36, 300, 300]:
        value = encode_value({"features": rng.normal(size=(n, 342)).astype(np.float16),
                              "confidence": np.ones(n, np.float16),
                              "frame_idxs": np.arange(n, dtype=np.int32)})
        for _ in range(2):  # first: full decode and learn; second: fast path
            got, want = fast(value), decode_value(value)
            assert list(got) == list(want)
            for k in want:
                assert got[k].dtype == want[k].dtype
                np.testing.assert_array_equal(got[k], want[k])
    # same length, other layout: the header check sends it to the full decoder
    a = encode_value({"features": np.ones((4, 2), np.float16)})
    b = encode_value({"features": np.ones((2, 4), np.float16)})
    assert len(a) == len(b)
    fast(a)
    assert fast(b)["features"].shape == (2, 4)
    broken = bytearray(a)
    broken[3] ^= 0xFF
    with pytest.raises(DatabaseError):
        fast(bytes(broken))
