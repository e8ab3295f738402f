"""Install the ``textkd`` package (a Detectron2 project) from ``projects/TextKD/textkd``.

detectron2 itself is a prerequisite installed the official way (see README.md); it is not
listed here because it is not published on PyPI.
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
    ],
    extras_require={"dev": ["pytest", "black", "ruff"]},
)
