"""What the numbers were measured on: CPUs, load, Python and client versions, server version."""
from __future__ import annotations

import os
import platform
import subprocess
from importlib import metadata
from typing import Any, Dict, Optional

import redis

from bench.common import server_cpu_scope


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def package_version(name: str) -> str:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "not installed"


def tool_version(path: Optional[str]) -> str:
    if path is None:
        return "not found"
    try:
        return subprocess.run([path, "--version"], capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError) as exc:
        return f"unknown ({exc})"


def describe(client: redis.Redis, binary: str, redis_benchmark: Optional[str]) -> Dict[str, Any]:
    server = client.info("server")
    name = "valkey" if "valkey_version" in server else "redis"
    return {
        "nproc": os.cpu_count(),
        "cpu_model": cpu_model(),
        "load_average": os.getloadavg()[0],
        "python": platform.python_version(),
        "redis_py": package_version("redis"),
        "hiredis": package_version("hiredis"),
        "walrus": package_version("walrus"),
        "server": f"{name} {server.get('valkey_version', server['redis_version'])}",
        "server_binary": binary,
        "server_cpu_scope": server_cpu_scope(client),
        "redis_benchmark": tool_version(redis_benchmark),
    }


def describe_line(machine: Dict[str, Any]) -> str:
    return (f"machine: {machine['nproc']} CPUs ({machine['cpu_model']}), Python {machine['python']}, "
            f"redis-py {machine['redis_py']}, hiredis {machine['hiredis']}, walrus {machine['walrus']}, "
            f"server {machine['server']} ({machine['server_binary']}), {machine['redis_benchmark']}, "
            f"load average {machine['load_average']:.2f} at start")
