"""GPU metrics per device, read through NVML (the `nvidia-ml-py` package, imported as `pynvml`).

On a machine without NVML (no driver, no GPU) the collector reports no GPUs and logs that once;
it never fails the agent. Every value is read at scrape time, so a scrape shows the device as it is now.
"""

from __future__ import annotations

import logging
import threading
from typing import Any, Iterable, Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

log = logging.getLogger(__name__)

# NVML clock-throttle reason bits -> the `reason` label value. Bit values are NVML's ABI.
THROTTLE_REASONS: dict[str, int] = {
    "gpu_idle": 0x1,
    "applications_clocks_setting": 0x2,
    "sw_power_cap": 0x4,
    "hw_slowdown": 0x8,
    "sync_boost": 0x10,
    "sw_thermal_slowdown": 0x20,
    "hw_thermal_slowdown": 0x40,
    "hw_power_brake_slowdown": 0x80,
    "display_clock_setting": 0x100,
}

_NVML_VOLATILE_ECC = 0
_NVML_MEMORY_ERROR_CORRECTED = 0
_NVML_MEMORY_ERROR_UNCORRECTED = 1
_NVML_TEMPERATURE_GPU = 0
_NVML_EVENT_XID_CRITICAL = 0x8
_NVML_CLOCK_SM = 1
_NVML_CLOCK_MEM = 2
_NVML_NVLINK_MAX_LINKS = 18  # NVML's constant where the binding lacks it (recent bindings say 36)
# NVLink error counter -> the `type` label (NVML_NVLINK_ERROR_DL_*).
NVLINK_ERRORS: dict[str, int] = {"replay": 0, "recovery": 1, "crc_flit": 2, "crc_data": 3}
_XID_WAIT_MS = 200

_unavailable_reported = False
_report_lock = threading.Lock()


def _report_unavailable_once(reason: str) -> None:
    global _unavailable_reported
    with _report_lock:
        if not _unavailable_reported:
            _unavailable_reported = True
            log.warning("NVML is not available (%s): reporting no GPUs on this node", reason)


def _load_nvml() -> Any | None:
    try:
        import pynvml
    except ImportError as error:  # the `monitor` extra is not installed
        _report_unavailable_once(f"nvidia-ml-py is not installed: {error}")
        return None
    return pynvml


class XidCounts:
    """Xid critical errors per GPU, counted by the agent since it started.

    Every GPU named at construction has its counter from 0, before any event: `increase()` needs a sample
    before the first event, or the first Xid of a GPU is never counted (a series born at 1 has no increase).
    The code of the latest Xid is a separate gauge, so the counter does not split into one series per code,
    each born at 1. Thread-safe: the NVML event thread records, scrapes read.
    """

    def __init__(self, gpus: Iterable[str]) -> None:
        self._lock = threading.Lock()
        self._counts: dict[str, int] = {gpu: 0 for gpu in gpus}
        self._last: dict[str, int] = {gpu: 0 for gpu in self._counts}

    def record(self, gpu: str, code: int) -> None:
        with self._lock:
            self._counts[gpu] = self._counts.get(gpu, 0) + 1
            self._last[gpu] = int(code)

    def families(self, node: str) -> tuple[CounterMetricFamily, GaugeMetricFamily]:
        labels = ["node", "gpu"]
        counts = CounterMetricFamily(
            "ddlc_gpu_xid_errors", "Xid critical errors seen since the agent started (0 from the start).", labels=labels
        )
        last = GaugeMetricFamily("ddlc_gpu_last_xid", "Code of the latest Xid critical error (0: none yet).", labels=labels)
        with self._lock:
            for gpu in sorted(self._counts, key=_gpu_order):
                counts.add_metric([node, gpu], self._counts[gpu])
                last.add_metric([node, gpu], self._last[gpu])
        return counts, last


def _gpu_order(gpu: str) -> tuple[int, str]:
    return (int(gpu), "") if gpu.isdigit() else (1 << 30, gpu)


class GpuCollector:
    """A prometheus_client collector for every GPU NVML can see.

    `nvml` is the NVML binding module; it defaults to `pynvml` and exists as a parameter so the value
    mapping can be checked on machines without a GPU.
    """

    def __init__(self, node: str, nvml: Any | None = None, watch_xid: bool = True) -> None:
        self.node = node
        self._nvml = nvml if nvml is not None else _load_nvml()
        self._handles: list[Any] = []
        self.xids = XidCounts(())  # the GPUs whose Xid events are watched, from 0 (see _start_xid_watch)
        self._stop = threading.Event()
        self._xid_thread: threading.Thread | None = None
        if self._nvml is None:
            return
        try:
            self._nvml.nvmlInit()
            count = self._nvml.nvmlDeviceGetCount()
            self._handles = [self._nvml.nvmlDeviceGetHandleByIndex(i) for i in range(count)]
        except Exception as error:  # NVMLError_LibraryNotFound, DriverNotLoaded, ...
            _report_unavailable_once(f"{type(error).__name__}: {error}")
            self._nvml = None
            self._handles = []
            return
        if watch_xid and self._handles:
            self._start_xid_watch()

    @property
    def available(self) -> bool:
        return self._nvml is not None

    @property
    def gpu_count(self) -> int:
        return len(self._handles)

    # Xid errors arrive as NVML events, not as a counter, so a thread waits for them and counts.
    def _start_xid_watch(self) -> None:
        nvml = self._nvml
        try:
            event_set = nvml.nvmlEventSetCreate()
        except Exception as error:
            log.info("Xid events are not supported here (%s): Xid counts stay at zero", error)
            return
        registered: list[str] = []
        for index, handle in enumerate(self._handles):
            try:
                nvml.nvmlDeviceRegisterEvents(handle, _NVML_EVENT_XID_CRITICAL, event_set)
                registered.append(str(index))
            except Exception as error:
                log.info("Xid events unsupported on GPU %d (%s): no Xid counter for it", index, error)
        if not registered:
            nvml.nvmlEventSetFree(event_set)
            return
        self.xids = XidCounts(registered)  # watched GPUs count from 0 before the first event
        self._xid_thread = threading.Thread(
            target=self._watch_xid, args=(event_set,), name="ddlc-xid-watch", daemon=True
        )
        self._xid_thread.start()

    def _watch_xid(self, event_set: Any) -> None:
        nvml = self._nvml
        try:
            while not self._stop.is_set():
                try:
                    event = nvml.nvmlEventSetWait(event_set, _XID_WAIT_MS)
                except Exception as error:
                    if getattr(error, "value", None) == getattr(nvml, "NVML_ERROR_TIMEOUT", 10):
                        continue
                    log.warning("stopped watching Xid events: %s", error)
                    return
                self.xids.record(self._gpu_index_for(event.device), int(event.eventData))
        finally:
            try:
                nvml.nvmlEventSetFree(event_set)
            except Exception:
                pass

    def _gpu_index_for(self, device: Any) -> str:
        try:
            return str(self._nvml.nvmlDeviceGetIndex(device))
        except Exception:
            return "unknown"

    def close(self) -> None:
        self._stop.set()
        if self._xid_thread is not None:
            self._xid_thread.join(timeout=2 * _XID_WAIT_MS / 1000)
        if self._nvml is not None:
            try:
                self._nvml.nvmlShutdown()
            except Exception:
                pass
            self._nvml = None

    def collect(self) -> Iterator[Metric]:
        node = self.node
        count = GaugeMetricFamily("ddlc_gpus", "GPUs visible through NVML on this node.", labels=["node"])
        count.add_metric([node], len(self._handles))
        yield count
        if not self._handles:
            return
        labels = ["node", "gpu"]
        info = GaugeMetricFamily("ddlc_gpu_info", "GPU identity (value 1).", labels=["node", "gpu", "name", "uuid"])
        util = GaugeMetricFamily("ddlc_gpu_utilization_ratio", "GPU busy time over NVML's last sample window (0-1).", labels=labels)
        mem_util = GaugeMetricFamily("ddlc_gpu_memory_utilization_ratio", "Memory controller busy time (0-1).", labels=labels)
        mem_used = GaugeMetricFamily("ddlc_gpu_memory_used_bytes", "GPU memory in use.", labels=labels)
        mem_total = GaugeMetricFamily("ddlc_gpu_memory_total_bytes", "GPU memory installed.", labels=labels)
        power = GaugeMetricFamily("ddlc_gpu_power_watts", "GPU board power draw.", labels=labels)
        temp = GaugeMetricFamily("ddlc_gpu_temperature_celsius", "GPU core temperature.", labels=labels)
        throttle = GaugeMetricFamily(
            "ddlc_gpu_clock_throttle_active", "1 while NVML reports this clock-throttle reason.", labels=labels + ["reason"]
        )
        ecc = CounterMetricFamily(
            "ddlc_gpu_ecc_errors", "ECC errors since the driver loaded (volatile).", labels=labels + ["type"]
        )
        nvml = self._nvml
        for index, handle in enumerate(self._handles):
            gpu = str(index)
            values = [node, gpu]
            read = _Reader(nvml, handle, gpu)
            name, uuid = read(nvml.nvmlDeviceGetName), read(nvml.nvmlDeviceGetUUID)
            info.add_metric([node, gpu, _text(name), _text(uuid)], 1)
            rates = read(nvml.nvmlDeviceGetUtilizationRates)
            if rates is not None:
                util.add_metric(values, rates.gpu / 100.0)
                mem_util.add_metric(values, rates.memory / 100.0)
            memory = read(nvml.nvmlDeviceGetMemoryInfo)
            if memory is not None:
                mem_used.add_metric(values, memory.used)
                mem_total.add_metric(values, memory.total)
            milliwatts = read(nvml.nvmlDeviceGetPowerUsage)
            if milliwatts is not None:
                power.add_metric(values, milliwatts / 1000.0)
            celsius = read(nvml.nvmlDeviceGetTemperature, _NVML_TEMPERATURE_GPU)
            if celsius is not None:
                temp.add_metric(values, celsius)
            reasons = read(nvml.nvmlDeviceGetCurrentClocksThrottleReasons)
            if reasons is not None:
                for reason, bit in THROTTLE_REASONS.items():
                    throttle.add_metric(values + [reason], 1 if reasons & bit else 0)
            for kind, error_type in (("corrected", _NVML_MEMORY_ERROR_CORRECTED), ("uncorrected", _NVML_MEMORY_ERROR_UNCORRECTED)):
                errors = read(nvml.nvmlDeviceGetTotalEccErrors, error_type, _NVML_VOLATILE_ECC)
                if errors is not None:
                    ecc.add_metric(values + [kind], errors)
        yield from (info, util, mem_util, mem_used, mem_total, power, temp, throttle, ecc)
        yield from self.xids.families(node)
        yield from _dcgm_style(nvml, node, self._handles)


def _dcgm_style(nvml: Any, node: str, handles: list[Any]) -> Iterator[Metric]:
    """The signals DCGM exporter users look for, where NVML gives them: clocks, energy, PCIe replays, NVLink
    errors and row remapping. A query the driver, the board or the binding lacks leaves out that value only."""
    labels = ["node", "gpu"]
    sm_clock = GaugeMetricFamily("ddlc_gpu_sm_clock_hertz", "Current SM clock.", labels=labels)
    mem_clock = GaugeMetricFamily("ddlc_gpu_memory_clock_hertz", "Current memory clock.", labels=labels)
    energy = CounterMetricFamily("ddlc_gpu_energy", "Energy used since the driver loaded, in joules.", labels=labels,
                                 unit="joules")
    replays = CounterMetricFamily("ddlc_gpu_pcie_replays", "PCIe replays (link-level retransmissions).", labels=labels)
    nvlink = CounterMetricFamily("ddlc_gpu_nvlink_errors", "NVLink errors, summed over the GPU's active links.",
                                 labels=labels + ["type"])
    pending = GaugeMetricFamily("ddlc_gpu_row_remap_pending", "1 while a row remap waits for a GPU reset.", labels=labels)
    failed = GaugeMetricFamily("ddlc_gpu_row_remap_failed", "1 once a row remap failed (replace the GPU).", labels=labels)
    rows = GaugeMetricFamily("ddlc_gpu_remapped_rows", "Rows remapped since manufacture, by the error that caused it.",
                             labels=labels + ["type"])
    query = lambda name: getattr(nvml, name, None)  # noqa: E731 - older bindings lack some
    max_links = int(getattr(nvml, "NVML_NVLINK_MAX_LINKS", _NVML_NVLINK_MAX_LINKS))
    for index, handle in enumerate(handles):
        gpu = str(index)
        values = [node, gpu]
        read = _Reader(nvml, handle, gpu)
        for family, clock in ((sm_clock, _NVML_CLOCK_SM), (mem_clock, _NVML_CLOCK_MEM)):
            mhz = read(query("nvmlDeviceGetClockInfo"), clock)
            if mhz is not None:
                family.add_metric(values, mhz * 1e6)
        millijoules = read(query("nvmlDeviceGetTotalEnergyConsumption"))
        if millijoules is not None:
            energy.add_metric(values, millijoules / 1000.0)
        count = read(query("nvmlDeviceGetPcieReplayCounter"))
        if count is not None:
            replays.add_metric(values, count)
        totals = _nvlink_errors(read, query, max_links)
        for kind, total in (totals or {}).items():
            nvlink.add_metric(values + [kind], total)
        remapped = read(query("nvmlDeviceGetRemappedRows"))
        if remapped is not None:
            correctable, uncorrectable, is_pending, failure = remapped
            pending.add_metric(values, 1 if is_pending else 0)
            failed.add_metric(values, 1 if failure else 0)
            rows.add_metric(values + ["correctable"], correctable)
            rows.add_metric(values + ["uncorrectable"], uncorrectable)
    yield from (f for f in (sm_clock, mem_clock, energy, replays, nvlink, pending, failed, rows) if f.samples)


def _nvlink_errors(read: "_Reader", query: Any, max_links: int) -> dict[str, int] | None:
    """Each error type summed over the active links; None for a GPU without NVLink (no series, not zeros)."""
    totals: dict[str, int] | None = None
    for link in range(max_links):
        state = read(query("nvmlDeviceGetNvLinkState"), link)
        if state is None:  # past the GPU's last link, or no NVLink at all
            break
        if not state:
            continue  # an inactive link keeps no error counts
        for kind, counter in NVLINK_ERRORS.items():
            value = read(query("nvmlDeviceGetNvLinkErrorCounter"), link, counter)
            if value is not None:
                totals = totals if totals is not None else {}
                totals[kind] = totals.get(kind, 0) + int(value)
    return totals


class _Reader:
    """Calls one NVML query; an unsupported query (ECC off, no power sensor) drops that value only, and so does a
    query the binding does not have (None)."""

    def __init__(self, nvml: Any, handle: Any, gpu: str) -> None:
        self.nvml, self.handle, self.gpu = nvml, handle, gpu

    def __call__(self, query: Any, *args: Any) -> Any:
        if query is None:
            return None
        try:
            return query(self.handle, *args)
        except Exception as error:
            log.debug("gpu %s: %s failed: %s", self.gpu, getattr(query, "__name__", query), error)
            return None


def _text(value: Any) -> str:
    if isinstance(value, bytes):
        return value.decode(errors="replace")
    return "" if value is None else str(value)
