"""Install the ``textkd`` package (a Detectron2 project) from ``projects/TextKD/textkd``.

detectron2 is not published on PyPI, so it is not listed here: ``scripts/setup_env.sh`` installs it
(official source or the registry's redistribution). Its runtime dependencies are listed, so that a
detectron2 installed without them (the registry build is unpacked with ``--no-deps``) still runs
the full training loop (tensorboard for the event writers, omegaconf/hydra for LazyConfig, …).
"""

from setuptools import find_packages, setup

setup(
    name="textkd",
    version="0.1.0",
    description="Text-assisted and label-assisted knowledge distillation for semantic "
    "segmentation, as a Detectron2 project",
    package_dir={"": "projects/TextKD"},
    packages=find_packages(where="projects/TextKD", include=["textkd", "textkd.*"]),
    python_requires=">=3.10",
    install_requires=[
        "torch>=2.1",
        "torchvision>=0.16",
        "fvcore>=0.1.5",
        "iopath",
        "timm>=0.9",
        "open_clip_torch>=2.20",
        "pycocotools",
        "cityscapesscripts",
        "opencv-python-headless",
        "tqdm",
        "numpy",
        "scipy",
        "h5py",
        "Pillow",
        # detectron2's runtime dependencies
        "tensorboard",
        "omegaconf>=2.1,<2.4",
        "hydra-core>=1.1",
        "cloudpickle",
        "yacs>=0.1.8",
        "tabulate",
        "termcolor>=1.1",
        "matplotlib",
        "packaging",
        "black",
        "setuptools<81",  # detectron2.model_zoo imports pkg_resources, removed in setuptools 81
    ],
    extras_require={"dev": ["pytest", "black", "ruff", "onnx", "onnxruntime"]},
)
