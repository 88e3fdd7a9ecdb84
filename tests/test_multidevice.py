"""Runs tests/multidevice_cases.py on 8 forced CPU devices in a separate process."""

import os
import subprocess
import sys

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))


@pytest.mark.slow  # a subprocess on 8 forced CPU devices
def test_multidevice_cases_pass_on_8_cpu_devices():
  env = dict(os.environ, JAX_PLATFORMS="cpu",
             XLA_FLAGS=f"{os.environ.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count=8")
  result = subprocess.run(
      [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-o", "addopts=",
       os.path.join(HERE, "multidevice_cases.py")],
      env=env, capture_output=True, text=True, timeout=900, cwd=os.path.dirname(HERE))
  assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-3000:]
  assert " passed" in result.stdout and "skipped" not in result.stdout, result.stdout[-2000:]
