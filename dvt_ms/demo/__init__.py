"""The shipped demo: real handwritten digits (scikit-learn's bundled set) as an ImageNet-style folder."""
