"""NetParameter plumbing: the upgraded layer list, phase/level/stage filtering, legacy input headers."""

from caffecam.engine.upgrade import upgrade_net
from caffecam.errors import CaffeCamError, net_label


def current_layers(net_param):
    """The net's layers as current LayerParameters, upgraded as Caffe upgrades legacy nets (upgrade.py)."""
    return list(upgrade_net(net_param)[0].layer)


def _rule_met(rule, state):
    if rule.HasField("phase") and rule.phase != state.phase:
        return False
    if rule.HasField("min_level") and state.level < rule.min_level:
        return False
    if rule.HasField("max_level") and state.level > rule.max_level:
        return False
    stages = set(state.stage)
    if any(s not in stages for s in rule.stage):
        return False
    return not any(s in stages for s in rule.not_stage)


def layer_included(lp, state):
    """Caffe's rule: with include rules, any one met includes the layer; otherwise any exclude rule met drops it."""
    if len(lp.include) and len(lp.exclude):
        raise CaffeCamError(f"layer '{lp.name}': has both include and exclude rules; use one")
    if len(lp.include):
        return any(_rule_met(r, state) for r in lp.include)
    return not any(_rule_met(r, state) for r in lp.exclude)


def legacy_inputs(net_param):
    """(name, shape) for the `input:` header, with shapes from `input_shape` or 4 `input_dim` values each."""
    names = list(net_param.input)
    if not names:
        return []
    if len(net_param.input_shape):
        shapes = [tuple(s.dim) for s in net_param.input_shape]
        if len(shapes) == 1:
            shapes = shapes * len(names)
    elif len(net_param.input_dim):
        dims = list(net_param.input_dim)
        if len(dims) != 4 * len(names):
            raise CaffeCamError(f"{net_label(net_param.name)}: {len(names)} inputs need {4 * len(names)} input_dim "
                                f"values, got {len(dims)}")
        shapes = [tuple(dims[4 * i: 4 * i + 4]) for i in range(len(names))]
    else:
        raise CaffeCamError(f"{net_label(net_param.name)}: input {names} has no input_shape or input_dim")
    if len(shapes) != len(names):
        raise CaffeCamError(f"{net_label(net_param.name)}: {len(names)} inputs but {len(shapes)} input shapes")
    return list(zip(names, shapes))
