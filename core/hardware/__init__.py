"""Hardware facts and choices: CPU, NVIDIA GPUs, device selection, dtype policy.

Modules, by job:

- ``choice``: ``DeviceChoice``, ``HOST_CPU`` (the device of a torch-free run), default batch sizes,
  ``accelerator_present`` (may torch find a GPU here? answered without torch).
- ``cpu``: CPU model and instruction sets, usable CPUs (affinity, cgroup quota), physical cores,
  torch threads, the decode pool size.
- ``nvidia``: NVIDIA GPUs as the driver (NVML, nvidia-smi) and torch see them; bf16 capability.
- ``device``: the torch build, ``probe`` and ``select_device`` (a proven device), MPS / XPU
  availability, out-of-memory handling.
- ``dtype``: the dtype policy (``select_dtype``, ``autocast``) and the CPU bf16 calibration it
  rests on; ``calibration`` measures and caches that.
- ``cpu_dtype``: ``--dtype`` on the CPU decided without torch (the same rule, from the cached
  calibration), for a run that may never import torch.
- ``explain``: the plan (device, dtype, threads, batch) in words (``describe_plan``).

``choice`` and ``cpu`` load with the package; the modules that import torch on first use of one of
their names (``core/lazy.py``).
"""

from ..lazy import lazy_exports
from .choice import DEFAULT_BATCH_SIZES, HOST_CPU, DeviceChoice, HostCPU, accelerator_present, default_batch_size
from .cpu import (ACCEL_DECODE_CAP, CPU_DECODE_CAP, CPU_FEATURES, configure_threads, cpu_features, cpu_flags,
                  cpu_has_native_bf16, cpu_has_native_fp16, cpu_model_name, decode_workers, physical_cores,
                  resolve_threads, running_under_rosetta, torch_threads, usable_cpus)
from .calibration import torch_version
from .cpu_dtype import cpu_dtype_without_torch
from .speeds import model_record, record_int8, record_run

# the modules below import torch: loaded with the first of their names a run asks for (core/lazy.py)
_DTYPE = ("BF16_MIN_SPEEDUP", "DTYPE_NAMES", "autocast", "cpu_bf16_calibration", "cpu_bf16_speedup", "dtype_reason",
          "select_dtype")
_NVIDIA = ("cuda_capability", "cuda_device_rows", "cuda_free_memory", "cuda_native_bf16", "driver_gpu_rows",
           "norm_uuid", "nvidia_driver_facts", "nvidia_smi_facts", "nvml_facts")
_DEVICE = ("TORCH_INSTALL_URL", "available_summary",
           "empty_cache", "is_oom_error", "mps_available", "mps_built", "probe", "select_device", "torch_build",
           "torch_facts", "xpu_available", "xpu_devices")
__getattr__ = lazy_exports(__name__, {**dict.fromkeys(_DTYPE, "dtype"), **dict.fromkeys(_NVIDIA, "nvidia"),
                                      **dict.fromkeys(_DEVICE, "device"), "describe_plan": "explain"})

__all__ = [
    "DeviceChoice", "HOST_CPU", "HostCPU", "accelerator_present", "cpu_dtype_without_torch", "torch_version",
    # speeds (this machine's run records)
    "model_record", "record_int8", "record_run",
    # cpu
    "ACCEL_DECODE_CAP", "CPU_DECODE_CAP", "CPU_FEATURES", "configure_threads", "cpu_features", "cpu_flags",
    "cpu_has_native_bf16", "cpu_has_native_fp16", "cpu_model_name", "decode_workers", "physical_cores",
    "resolve_threads", "running_under_rosetta", "torch_threads", "usable_cpus",
    # nvidia
    "cuda_capability", "cuda_device_rows", "cuda_free_memory", "cuda_native_bf16", "driver_gpu_rows", "norm_uuid",
    "nvidia_driver_facts", "nvidia_smi_facts", "nvml_facts",
    # device
    "DEFAULT_BATCH_SIZES", "TORCH_INSTALL_URL", "available_summary", "default_batch_size",
    "empty_cache", "is_oom_error", "mps_available", "mps_built", "probe", "select_device", "torch_build",
    "torch_facts", "xpu_available", "xpu_devices",
    # dtype
    "BF16_MIN_SPEEDUP", "DTYPE_NAMES", "autocast", "cpu_bf16_calibration", "cpu_bf16_speedup", "dtype_reason",
    "select_dtype",
    # explain
    "describe_plan",
]
