"""Doctor proves NCCL loads aws-ofi-nccl (a one-process NCCL init, NCCL_DEBUG=INFO) and that nvidia-fabricmanager
runs on NVSwitch machines. The NCCL log lines below are NCCL's own wording (aws-ofi-nccl 1.x, NCCL 2.2x); the probe
itself runs on the GPU machine (scripts/gpu_check.sh)."""

from __future__ import annotations

from pathlib import Path

from ddlc.ops import doctor
from ddlc.ops.doctor import Status

OFI_LOG = """ip-10-0-1-12:1234:1234 [0] NCCL INFO NCCL_SOCKET_IFNAME set by environment to ^lo,docker
ip-10-0-1-12:1234:1234 [0] NCCL INFO NET/OFI Initializing aws-ofi-nccl 1.13.2
ip-10-0-1-12:1234:1234 [0] NCCL INFO NET/OFI Selected provider is efa, fabric is efa-direct (found 4 nics)
ip-10-0-1-12:1234:1234 [0] NCCL INFO Using network Libfabric
ddlc-nccl-probe-ok"""

SOCKET_LOG = """ip-10-0-1-12:1234:1234 [0] NCCL INFO NET/Plugin: Could not find: libnccl-net.so.
ip-10-0-1-12:1234:1234 [0] NCCL INFO NET/Socket : Using [0]ens32:10.0.1.12<0>
ip-10-0-1-12:1234:1234 [0] NCCL INFO Using network Socket
ddlc-nccl-probe-ok"""


def test_the_network_nccl_chose_is_read_from_its_log():
    assert doctor.nccl_network(OFI_LOG)[0] == "ofi"
    kind, line = doctor.nccl_network(SOCKET_LOG)
    assert kind == "socket" and line.endswith("Using network Socket")
    assert doctor.nccl_network("nothing here") == (None, "")


def test_plugin_loaded_passes_and_socket_fallback_fails():
    ok = doctor.check_nccl_net_plugin(True, True, True, lambda: (0, OFI_LOG))
    assert ok.status is Status.PASS and "aws-ofi-nccl" in ok.detail
    fallback = doctor.check_nccl_net_plugin(True, True, True, lambda: (0, SOCKET_LOG))
    assert fallback.status is Status.FAIL and "Using network Socket" in fallback.detail
    assert "LD_LIBRARY_PATH" in fallback.fix and fallback.doc.endswith("#efa-not-used-falls-back-to-tcp")
    broken = doctor.check_nccl_net_plugin(True, True, True, lambda: (1, "RuntimeError: NCCL error: unhandled"))
    assert broken.status is Status.FAIL and "NCCL init failed" in broken.detail


def test_plugin_probe_is_skipped_without_efa_or_gpus():
    never = lambda: (_ for _ in ()).throw(AssertionError("must not run"))  # noqa: E731
    assert doctor.check_nccl_net_plugin(False, True, True, never).status is Status.SKIP
    assert doctor.check_nccl_net_plugin(True, False, True, never).status is Status.SKIP


def _proc_tree(root: Path, names: list[str]) -> Path:
    for pid, name in enumerate(names, start=100):
        (root / "proc" / str(pid)).mkdir(parents=True)
        (root / "proc" / str(pid) / "comm").write_text(name + "\n")
    (root / "proc").mkdir(exist_ok=True)
    return root / "proc"


def test_fabricmanager_on_nvswitch(tmp_path):
    dev = tmp_path / "dev"
    dev.mkdir()
    assert not doctor.nvswitch_present(dev, None)
    assert doctor.nvswitch_present(dev, "p4d.24xlarge") and not doctor.nvswitch_present(dev, "p3dn.24xlarge")
    (dev / "nvidia-nvswitch0").touch()
    assert doctor.nvswitch_present(dev, None)

    stopped = _proc_tree(tmp_path / "a", ["sshd", "python"])
    running = _proc_tree(tmp_path / "b", ["sshd", "nv-fabricmanage"])  # the kernel keeps 15 characters
    failed = doctor.check_fabricmanager(True, doctor.process_running(stopped, doctor.FABRIC_MANAGER), "p5.48xlarge")
    assert failed.status is Status.FAIL and "error 802" in failed.detail and "p5.48xlarge" in failed.detail
    assert "systemctl enable --now nvidia-fabricmanager" in failed.fix
    assert doctor.check_fabricmanager(True, doctor.process_running(running, doctor.FABRIC_MANAGER),
                                      None).status is Status.PASS
    assert doctor.check_fabricmanager(False, False, "g5.xlarge").status is Status.PASS


def test_run_checks_reports_both(tmp_path):
    dev = tmp_path / "dev"
    dev.mkdir()
    options = doctor.DoctorOptions(environ={}, cluster_env_file=tmp_path / "none", proc_root=tmp_path / "proc",
                                   sys_root=tmp_path / "sys", dev_root=dev, instance_type="p4d.24xlarge",
                                   min_free_gb=0, interfaces=["lo"], master_port=1)
    checks = {r.name: r for r in doctor.run_checks(options)}
    assert checks["fabricmanager"].status is Status.FAIL  # the table says NVSwitch, no fabric manager runs
    assert checks["nccl-net-plugin"].status is Status.SKIP  # no EFA in this tree
