"""Where and when a benchmark ran: the machine facts every result file is
stamped with."""
from __future__ import annotations

import datetime
import os
import platform
from pathlib import Path

import torch


def cpu_model() -> str:
    try:
        for line in Path('/proc/cpuinfo').read_text().splitlines():
            if line.startswith('model name'):
                return line.split(':', 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info(device: str) -> dict:
    """Where and when: CPU, cores, threads, load, device, versions, date."""
    import mmseg
    info = dict(
        date=datetime.datetime.now(datetime.timezone.utc).isoformat(
            timespec='seconds'),
        cpu=cpu_model(),
        cpu_cores=os.cpu_count(),
        cpu_cores_usable=len(os.sched_getaffinity(0))
        if hasattr(os, 'sched_getaffinity') else os.cpu_count(),
        threads=torch.get_num_threads(),
        load_average=[round(v, 2) for v in os.getloadavg()],
        device=device,
        torch=torch.__version__,
        mmseg=mmseg.__version__,
        python=platform.python_version(),
    )
    try:
        import onnxruntime
        info['onnxruntime'] = onnxruntime.__version__
    except ImportError:
        info['onnxruntime'] = None
    if device.startswith('cuda'):
        info['gpu'] = torch.cuda.get_device_name(device)
    return info
