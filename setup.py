"""Build script: compiles the Cython hot path in wallaroo/_core.

Everything else about the package lives in pyproject.toml.
"""
from Cython.Build import cythonize
from setuptools import Extension, setup

CORE_MODULES = ["frames", "hashing", "chain", "windows", "histogram", "routing", "serde", "ring"]

extensions = [
    Extension(f"wallaroo._core.{name}", [f"wallaroo/_core/{name}.pyx"])
    for name in CORE_MODULES
]

setup(
    ext_modules=cythonize(
        extensions,
        language_level=3,
        compiler_directives={
            "boundscheck": False,
            "wraparound": False,
            "cdivision": True,
            "embedsignature": True,
        },
    ),
)
