"""The one C extension; everything else about the package is in pyproject.toml.

``snnrm.kubelet._id_index`` looks GetPreferredAllocation's device IDs up straight from the request's wire bytes
(snnrm/kubelet/id_index.py says why). It is optional: without a C compiler snnrm installs and runs on the
pure-Python path, which gives the same answers, only slower.
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "snnrm.kubelet._id_index",
            sources=["snnrm/kubelet/_id_index.c"],
            extra_compile_args=["-O2", "-Wall", "-Wextra"],
            optional=True,
        )
    ]
)
