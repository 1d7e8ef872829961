import os

import numpy as np
import pytest

from pytest_llmperf.measure import nvml, page_cache
from pytest_llmperf.measure.memory import HostMemoryMeter
from pytest_llmperf.measure.roofline import decode_bw_util
from pytest_llmperf.prompts import prompt_token_ids


def test_prompts_are_seeded_and_rows_do_not_depend_on_batch_size():
    one = prompt_token_ids(vocab_size=1000, batch_size=1, prompt_tokens=16, seed=3)
    eight = prompt_token_ids(vocab_size=1000, batch_size=8, prompt_tokens=16, seed=3)
    assert eight.shape == (8, 16) and eight.dtype == np.int64
    np.testing.assert_array_equal(eight[:1], one)
    np.testing.assert_array_equal(eight, prompt_token_ids(vocab_size=1000, batch_size=8, prompt_tokens=16, seed=3))
    assert not np.array_equal(eight, prompt_token_ids(vocab_size=1000, batch_size=8, prompt_tokens=16, seed=4))
    assert len({tuple(r) for r in eight}) == 8


def test_prompts_never_draw_special_tokens():
    ids = prompt_token_ids(vocab_size=6, batch_size=64, prompt_tokens=64, seed=0, special_ids=[0, 1, 2, None, 99])
    assert set(np.unique(ids)) == {3, 4, 5}
    with pytest.raises(ValueError, match="no non-special token"):
        prompt_token_ids(vocab_size=2, batch_size=1, prompt_tokens=1, seed=0, special_ids=[0, 1])


def test_host_peak_is_the_spans_own_not_the_process_lifetime_maximum():
    meter = HostMemoryMeter()
    big = np.ones(256 * 2**20 // 8)  # 256 MiB touched before the span
    del big
    meter.start()
    small = np.ones(16 * 2**20 // 8)  # 16 MiB inside it
    peak = meter.stop()
    del small
    import psutil

    rss_now = psutil.Process().memory_info().rss
    assert peak.method in ("vmhwm", "sampled")
    assert peak.peak_bytes < rss_now + 128 * 2**20  # the earlier 256 MiB is not in this span's peak


def test_page_cache_residency_after_eviction_and_after_a_read(tmp_path):
    path = tmp_path / "weights.safetensors"
    path.write_bytes(os.urandom(4 * 2**20))
    page_cache.evict([path])
    cold = page_cache.resident_fraction([path])
    path.read_bytes()
    warm = page_cache.resident_fraction([path])
    if cold is None:
        pytest.skip("mincore is not available here")
    assert cold < 0.5 and warm == 1.0
    assert page_cache.weight_files(tmp_path) == [path]


def test_cuda_visible_devices_is_applied_like_the_runtime_does():
    handles = [("h0", "GPU-aaa"), ("h1", "GPU-bbb"), ("h2", "GPU-ccc")]
    assert nvml._select_visible(handles, None) == handles
    assert nvml._select_visible(handles, "2,0") == [handles[2], handles[0]]
    assert nvml._select_visible(handles, "GPU-bbb") == [handles[1]]
    assert nvml._select_visible(handles, "1,7,0") == [handles[1]]  # stops at the first invalid entry
    assert nvml._select_visible(handles, "") == []


def test_memory_bandwidth_and_decode_utilisation():
    h100 = nvml.memory_bandwidth(2619, 5120)
    assert h100 == pytest.approx(3.352e12, rel=1e-3)
    # 2.2 GB read per step in 20 ms on a 3.35 TB/s device: 3.3 % of the floor
    assert decode_bw_util(2_200_000_000, 20.0, h100) == pytest.approx(0.0328, rel=1e-2)
