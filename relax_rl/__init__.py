"""relax-rl: policy-gradient RL and discrete gradient estimators built around RELAX.

Grathwohl, Choi, Wu, Roeder, Duvenaud. "Backpropagation through the Void: Optimizing control
variates for black-box gradient estimation." ICLR 2018 (arXiv:1711.00123).
"""

__version__ = "0.1.0"
