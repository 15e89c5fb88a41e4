"""An OpenVINO model cut into consecutive parts and put back together: how a UNet too big for one
SmoothQuant pass (quantize_openvino) is quantized a part at a time.

A cut falls between two positions of the topological order. The tensors that cross it (made before
it, read after it) become Results of the part before and Parameters of the part after, named
"cut:<producer>:<port>"; a tensor crossing several cuts passes through the parts between. Constants
are not cut: every part is built from a clone of the whole model, so a part keeps whichever
constants its own operations read. Cuts are placed where the weights divide evenly, at the position
near there that the fewest tensors cross (a UNet's skip connections cross wherever it is cut).
`stitch` connects every "cut:" Parameter to the Result of the same name and returns one model with
the original inputs and outputs, so quantizing the parts one by one and stitching them gives the
graph quantizing the whole would, each part's activation ranges calibrated on what the part before
it computes (`part_feeds`).
"""

import numpy as np

WINDOW = 0.05  # cut within this share of the weights of the even division


def split(model, parts: int) -> list:
    """`model` (an ov.Model) as `parts` ov.Models, in order; see the module docstring."""
    import openvino as ov

    ops = [op for op in model.get_ordered_ops() if op.get_type_name() != "Result"]
    names = [op.get_friendly_name() for op in ops]
    if len(set(names)) != len(names):
        raise ValueError("the model's operations need unique names to be cut into parts")
    constant = _constant_ops(ops)
    position = {name: i for i, name in enumerate(names)}
    cuts = _cut_positions(ops, constant, position, parts)
    crossing = {cut: _crossing(ops, constant, position, cut) for cut in cuts}
    inputs = [p.get_friendly_name() for p in model.get_parameters()]
    bounds = [0, *cuts, len(ops)]
    pieces = []
    for start, end in zip(bounds, bounds[1:]):
        clone = model.clone()
        by_name = {op.get_friendly_name(): op for op in clone.get_ordered_ops()}
        entering = {}
        for producer, port in crossing.get(start, []):
            output = by_name[producer].output(port)
            parameter = ov.opset13.parameter(output.get_partial_shape(), output.get_element_type(),
                                             name=_cut_name(producer, port))
            parameter.output(0).set_names({_cut_name(producer, port)})
            for target in list(output.get_target_inputs()):
                target.replace_source_output(parameter.output(0))
            entering[(producer, port)] = parameter
        if end == len(ops):
            results = list(clone.get_results())
        else:
            results = []
            for producer, port in crossing[end]:
                source = entering[(producer, port)].output(0) if (producer, port) in entering else by_name[producer].output(port)
                result = ov.opset13.result(source, name=_cut_name(producer, port))
                results.append(result)
        used = _reachable_parameters(results)
        parameters = [p for name in inputs for p in [by_name[name]] if name in used] + list(entering.values())
        pieces.append(ov.Model(results, parameters, f"{model.get_friendly_name()}.part{len(pieces)}"))
    return pieces


def stitch(pieces: list, original_inputs: list[str]):
    """One ov.Model from parts made by `split` (quantized or not), with the original inputs in the
    order `original_inputs` names them."""
    import openvino as ov

    produced, inputs = {}, {}
    for piece in pieces:
        for parameter in piece.get_parameters():
            name = parameter.get_friendly_name()
            if name.startswith("cut:"):
                source = produced[name]
            elif name in inputs:
                source = inputs[name].output(0)
            else:
                inputs[name] = parameter
                continue
            for target in list(parameter.output(0).get_target_inputs()):
                target.replace_source_output(source)
        if piece is not pieces[-1]:
            produced.update({result.get_friendly_name(): result.input_value(0) for result in piece.get_results()})
    return ov.Model(list(pieces[-1].get_results()), [inputs[name] for name in original_inputs], pieces[-1].get_friendly_name().rsplit(".part", 1)[0])


def part_feeds(pieces: list, samples: list[dict]) -> list[list[dict]]:
    """Each part's calibration feeds: the original inputs it reads, and the crossing tensors the float
    parts before it compute in fp32 from `samples` (one compiled part in memory at a time)."""
    import openvino as ov

    core = ov.Core()
    pools = [dict(sample) for sample in samples]
    feeds = []
    for index, piece in enumerate(pieces):
        names = [p.get_friendly_name() for p in piece.get_parameters()]
        feeds.append([{name: pool[name] for name in names} for pool in pools])
        if index == len(pieces) - 1:
            break
        compiled = core.compile_model(piece, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
        request = compiled.create_infer_request()
        for pool, feed in zip(pools, feeds[-1]):
            outputs = request.infer(feed)
            for result, output in zip(piece.get_results(), compiled.outputs):
                pool[result.get_friendly_name()] = np.array(outputs[output], copy=True)
        del request, compiled
    return feeds


def _cut_name(producer: str, port: int) -> str:
    return f"cut:{producer}:{port}"


def _constant_ops(ops) -> set[str]:
    """Operations whose value does not depend on an input: Constants and what only they feed."""
    constant = set()
    for op in ops:
        kind = op.get_type_name()
        if kind == "Constant" or (kind != "Parameter" and op.get_input_size() and all(
                op.input_value(i).get_node().get_friendly_name() in constant for i in range(op.get_input_size()))):
            constant.add(op.get_friendly_name())
    return constant


def _cut_positions(ops, constant: set, position: dict, parts: int) -> list[int]:
    """The positions to cut at: near each k/parts of the weight bytes, where the fewest tensors cross."""
    weight = np.zeros(len(ops))
    for op in ops:
        if op.get_type_name() == "Constant":
            readers = [position[t.get_node().get_friendly_name()] for t in op.output(0).get_target_inputs()
                       if t.get_node().get_type_name() != "Result"]
            if readers:
                weight[min(readers)] += op.get_byte_size()
    share = np.cumsum(weight) / weight.sum()
    live = _live_counts(ops, constant, position)
    cuts = []
    for k in range(1, parts):
        distance = np.abs(share - k / parts)
        window = [i for i in range(1, len(ops)) if distance[i - 1] <= max(WINDOW, distance.min())]
        cuts.append(min(window, key=lambda i: (live[i], distance[i - 1])))
    return sorted(set(cuts))


def _live_counts(ops, constant: set, position: dict) -> np.ndarray:
    """live[i]: how many tensors a cut before position i crosses."""
    delta = np.zeros(len(ops) + 2, dtype=int)
    for i, op in enumerate(ops):
        if op.get_friendly_name() in constant or op.get_type_name() == "Parameter":
            continue
        for output in op.outputs():
            last = max((position.get(t.get_node().get_friendly_name(), len(ops)) for t in output.get_target_inputs()), default=-1)
            if last > i:
                delta[i + 1] += 1
                delta[last + 1] -= 1
    return np.cumsum(delta)[:len(ops)]


def _crossing(ops, constant: set, position: dict, cut: int) -> list[tuple[str, int]]:
    """The (producer, port) tensors made before `cut` and read at or after it (Parameters excepted:
    every part reads the model's inputs itself)."""
    crossing = []
    for op in ops[:cut]:
        if op.get_friendly_name() in constant or op.get_type_name() == "Parameter":
            continue
        for port, output in enumerate(op.outputs()):
            if any(position.get(t.get_node().get_friendly_name(), len(ops)) >= cut for t in output.get_target_inputs()):
                crossing.append((op.get_friendly_name(), port))
    return crossing


def _reachable_parameters(results) -> set[str]:
    seen, pending, found = set(), list(results), set()
    while pending:
        node = pending.pop()
        if node.get_friendly_name() in seen:
            continue
        seen.add(node.get_friendly_name())
        if node.get_type_name() == "Parameter":
            found.add(node.get_friendly_name())
        pending.extend(node.input_value(i).get_node() for i in range(node.get_input_size()))
    return found
