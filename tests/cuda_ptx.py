"""Shared setup of the tests that compile CUDA kernels for a real GPU without running them.

numba-cuda compiles a kernel to PTX through libNVVM and needs NVRTC (the
``nvidia-cuda-nvrtc`` wheel of the ``cuda`` extra); ``ptxas`` (the
``nvidia-cuda-nvcc`` wheel, installed by CI's last stage, or a CUDA toolkit)
then assembles the PTX into machine code for one compute capability, which is
where register spills and unsupported instructions show up.
"""
import os
import shutil
import subprocess
import types
from pathlib import Path

import pytest

#: compute capabilities compiled for: the data-centre GPUs of the last two generations
#: (A100: sm_80, H100/H200: sm_90).  Both run in CI's ``thorough`` stage, which also
#: installs ``ptxas``; each costs ~20-25 s of compilation on two cores, which the README's
#: test command leaves out (run them with ``pytest -m thorough -k ptx``).
PTX_TARGETS = [pytest.param((8, 0), marks=pytest.mark.thorough), pytest.param((9, 0), marks=pytest.mark.thorough)]


def ptx_target(monkeypatch, avail, cc=(8, 0)):
    """The compute capability to compile for (``cc``; on a GPU, that GPU's), or skip the calling test.

    Skips under the simulator (the parent run compiles), without numba-cuda,
    or when NVVM/NVRTC cannot compile a probe kernel.  Without a GPU it
    compiles for ``cc``, answering numba-cuda's compute-capability query.
    """
    if os.environ.get("NUMBA_ENABLE_CUDASIM", "") not in ("", "0"):
        pytest.skip("the CUDA simulator is active in this process; the parent run compiles")
    if "numba-cuda" in avail.reason:
        pytest.skip(avail.reason)
    import numba
    from numba import cuda as real_cuda
    if avail:
        cc = real_cuda.get_current_device().compute_capability
    else:
        # no GPU: device functions ask the current device for its compute
        # capability; answer for it (compile only, nothing is launched)
        import numba.cuda.dispatcher as disp
        monkeypatch.setattr(disp, "get_current_device",
                            lambda: types.SimpleNamespace(compute_capability=tuple(cc)))

    def probe(a):
        a[0] = 1.0
    try:
        real_cuda.compile_ptx(probe, (numba.float32[::1],), cc=cc)
    except Exception as exc:  # noqa: BLE001 - any missing toolkit piece
        pytest.skip(f"cannot compile PTX here (NVVM/NVRTC missing?): {type(exc).__name__}: "
                    f"{str(exc).splitlines()[0] if str(exc) else ''}")
    return tuple(cc)


def find_ptxas():
    """The path of a ``ptxas`` (a CUDA toolkit, or the ``nvidia-cuda-nvcc`` wheel), or None."""
    # the wheel first: it matches the NVRTC wheel that wrote the PTX (an older
    # toolkit's ptxas refuses a newer PTX version)
    dirs = []
    try:
        import nvidia
        dirs += [str(Path(p) / sub) for p in nvidia.__path__ for sub in ("cu13", "cuda_nvcc")]
    except ImportError:
        pass
    dirs += [os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), "/usr/local/cuda",
             *sorted(map(str, Path("/usr/local").glob("cuda-*")), reverse=True)]
    for d in filter(None, dirs):
        p = Path(d) / "bin" / "ptxas"
        if p.is_file() and os.access(p, os.X_OK):
            return str(p)
    return shutil.which("ptxas")


def assemble(ptxas, ptx, cc, path):
    """Assemble ``ptx`` for ``sm_<cc>`` with ``ptxas -v``; returns its report (stderr), asserts success."""
    Path(path).write_text(ptx)
    r = subprocess.run([ptxas, f"-arch=sm_{cc[0]}{cc[1]}", "-v", str(path), "-o", os.devnull],
                       capture_output=True, text=True, timeout=120)
    if r.returncode != 0 and "Unsupported .version" in r.stderr:
        pytest.skip(f"{ptxas} is older than the NVRTC that wrote the PTX: {r.stderr.strip()}")
    assert r.returncode == 0, f"ptxas -arch=sm_{cc[0]}{cc[1]} failed:\n{r.stderr}"
    return r.stderr
