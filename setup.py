"""Install: pip install -e .[test]"""

from setuptools import find_packages, setup

setup(
    name="iwae_kernels",
    version="0.1.0",
    description="Fused Triton kernels for the Importance Weighted Autoencoder (IWAE) loss",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    packages=find_packages(include=["iwae_kernels", "iwae_kernels.*"]),
    python_requires=">=3.9",
    install_requires=[
        "torch>=2.1",
        "numpy",
        "triton>=3.0; platform_system == 'Linux'",
    ],
    extras_require={"test": ["pytest>=7"]},
)
