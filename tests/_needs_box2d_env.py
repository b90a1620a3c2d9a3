"""An env module that fails to import as gymnasium's Box2D envs do without ``box2d``
(tests/test_envs.py)."""

from gymnasium.error import DependencyNotInstalled

raise DependencyNotInstalled('Box2D is not installed, run `pip install "gymnasium[box2d]"`')
