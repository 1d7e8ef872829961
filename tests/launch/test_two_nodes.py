"""Two "nodes" on one machine: two elastic agents meet at a c10d rendezvous on 127.0.0.1 and run one model."""

from __future__ import annotations

import numpy as np
import psutil

from pytest_llmperf.backends.base import LoadRequest
from pytest_llmperf.correctness import CHECK_NEW_TOKENS, compare_tokens
from pytest_llmperf.launch.distributed import GroupSpec
from pytest_llmperf.launch.group_launcher import GroupLauncher
from tests.launch.procs import PROMPT_TOKENS, descendants, group_env, group_processes, survivors


def test_two_agents_run_one_tensor_parallel_model(llama, hf_reference, tmp_path):
    # hf-tp, not ds-inference: on the CPU, DeepSpeed 0.19.8's shared-memory all-reduce crashes (SIGSEGV)
    # when a node holds fewer ranks than the group (LOCAL_SIZE < WORLD_SIZE) instead of falling back to gloo
    spec = GroupSpec(backend_id="hf-tp", world_size=2, nnodes=2, device_kind="cpu", log_dir=tmp_path / "logs",
                     timeout_s=120, env=group_env())
    children_before = {p.pid for p in psutil.Process().children()}
    before = descendants()
    launcher = GroupLauncher(spec, labels=("cpu#0", "cpu#1"), independent_streams=False)
    procs = group_processes(before, launcher.group.hellos)
    try:
        agents = {p.pid for p in psutil.Process().children()} - children_before
        hellos = launcher.group.hellos
        assert len(agents) == 2, f"expected one agent per node, found {agents}"
        # each rank is the only one of its node, and a child of its own agent
        assert [(h.rank, h.local_rank, h.world_size) for h in hellos] == [(0, 0, 2), (1, 0, 2)]
        parents = [psutil.Process(h.pid).ppid() for h in hellos]
        assert set(parents) == agents, (parents, agents)
        # both joined one group through the same rendezvous (torch's MASTER_ADDR/PORT of the group)
        assert len({(h.master_addr, h.master_port) for h in hellos}) == 1

        load = launcher.load(LoadRequest(llama.path, "float32", "cpu"))
        assert load.devices == ("cpu#0", "cpu#1")
        outputs = launcher.tokens(hf_reference.input_ids, CHECK_NEW_TOKENS)
        for output in outputs:
            np.testing.assert_array_equal(output, hf_reference.tokens)
        check = compare_tokens(hf_reference.tokens, outputs, prompt_tokens=PROMPT_TOKENS, exact=True)
        assert check.outcome == "match", check.detail
    finally:
        launcher.close()
    assert not survivors(procs, wait_s=2.0)
