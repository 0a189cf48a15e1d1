"""dvt_ms: the Dynamic Vision Transformer (DVT) in MindSpore."""

from setuptools import find_packages, setup

setup(
    name="dvt_ms",
    version="0.1.0",
    description="Dynamic Vision Transformer (DVT, NeurIPS 2021) for MindSpore: models, converter, early exit",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    packages=find_packages(include=["dvt_ms", "dvt_ms.*"]),
    package_data={"dvt_ms.kernels": ["*.cc", "*.h"]},  # compiled on first use (dvt_ms.kernels.build)
    python_requires=">=3.10",
    install_requires=["mindspore>=2.6", "numpy<2", "pyyaml", "pillow", "safetensors", "tqdm"],
    extras_require={
        "test": ["pytest", "ruff"],
        "torch": ["torch>=2.1"],
        "demo": ["scikit-learn"],
        "onnx": ["onnx", "onnxruntime", "torch>=2.1"],  # dvt-export --format onnx, dvt-predict on ONNX Runtime
        # dvt-serve; uvicorn parses HTTP with httptools when it is installed (h11 otherwise, ~0.3 ms more a request)
        "serve": ["fastapi>=0.100", "uvicorn>=0.30", "httptools>=0.6", "python-multipart>=0.0.13", "prometheus_client"],
        "ray": ["ray[serve]>=2.40"],  # dvt-serve --backend ray
    },
    entry_points={"console_scripts": [
        "dvt-audit = dvt_ms.audit.cli:main",
        "dvt-convert = dvt_ms.convert.cli:main",
        "dvt-eval = dvt_ms.inference.cli:main",
        "dvt-export = dvt_ms.serve.export:main",
        "dvt-predict = dvt_ms.serve.predict:main",
        "dvt-serve = dvt_ms.serve.server:main",
        "dvt-train = dvt_ms.train.cli:main",
    ]},
)
