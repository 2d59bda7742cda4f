"""Shared fixtures of the search integration tests: H2's trained ResNet-20 checkpoint and MNIST split."""

from tests.fixtures.models import mnist_splits, trained_resnet20_mnist  # noqa: F401
