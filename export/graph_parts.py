"""An OpenVINO model cut into consecutive parts and put back together: how a UNet too big for one
SmoothQuant pass (quantize_openvino) is quantized a part at a time.

A cut falls between two positions of the topological order. The tensors that cross it (made before
it, read by an operation after it) become Results of the part before and Parameters of the part
after, named "cut:<producer>:<port>"; a tensor crossing several cuts passes through the parts between.
An original output stays in the part that computes it, and an input no operation reads in the first.
Constants are not cut: every part is built from a clone of the whole model, so a part keeps the
constants its own operations read. Cuts are placed where the weights divide evenly, at the nearby
position the fewest tensors cross (a UNet's skip connections cross wherever it is cut).
`stitch` connects every "cut:" Parameter to the Result of that name. Quantized part by part, each
part's activation ranges calibrated on what the float parts before it compute (`part_feeds`), the
stitched graph is the one quantizing the whole gives, except where a pattern spans a cut: NNCF sees a
Parameter there.
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
    position = {name: i for i, name in enumerate(names)}
    spans = _spans(ops, _constant_ops(ops), position)
    bounds = [0, *_cut_positions(ops, position, spans, parts), len(ops)]
    inputs = [p.get_friendly_name() for p in model.get_parameters()]
    outputs = {r.get_friendly_name(): position[r.input_value(0).get_node().get_friendly_name()] for r in model.get_results()}
    pieces = []
    for start, end in zip(bounds, bounds[1:]):
        clone = model.clone()
        by_name = {op.get_friendly_name(): op for op in clone.get_ordered_ops()}
        entering = {}
        for producer, port in _crossing(spans, start):
            output = by_name[producer].output(port)
            parameter = ov.opset13.parameter(output.get_partial_shape(), output.get_element_type(),
                                             name=_cut_name(producer, port))
            parameter.output(0).set_names({_cut_name(producer, port)})
            for target in list(output.get_target_inputs()):
                target.replace_source_output(parameter.output(0))
            entering[(producer, port)] = parameter
        results = [by_name[name] for name, made in outputs.items() if start <= made < end]
        for producer, port in _crossing(spans, end) if end < len(ops) else []:
            source = entering[(producer, port)].output(0) if (producer, port) in entering else by_name[producer].output(port)
            results.append(ov.opset13.result(source, name=_cut_name(producer, port)))
        used = _reachable_parameters(results)
        unread = [name for name in inputs if start == 0 and not by_name[name].output(0).get_target_inputs()]
        parameters = [by_name[name] for name in inputs if name in used or name in unread]
        pieces.append(ov.Model(results, parameters + list(entering.values()), f"{model.get_friendly_name()}.part{len(pieces)}"))
    return pieces


def stitch(pieces: list, inputs: list[str], outputs: list[str]):
    """One ov.Model from parts made by `split` (quantized or not): the original inputs and outputs,
    named by `inputs` and `outputs` (friendly names of its Parameters and Results), in their order.
    The pieces are used up: their Parameters are rewired into the stitched graph."""
    import openvino as ov

    produced, parameters, results = {}, {}, {}
    for piece in pieces:
        for parameter in piece.get_parameters():
            name = parameter.get_friendly_name()
            if name.startswith("cut:"):
                source = produced[name]
            elif name in parameters:
                source = parameters[name].output(0)
            else:
                parameters[name] = parameter
                continue
            for target in list(parameter.output(0).get_target_inputs()):
                target.replace_source_output(source)
        for result in piece.get_results():
            name = result.get_friendly_name()
            if name.startswith("cut:"):
                produced[name] = result.input_value(0)
            else:
                results[name] = result
    return ov.Model([results[name] for name in outputs], [parameters[name] for name in inputs],
                    pieces[0].get_friendly_name().rsplit(".part", 1)[0])


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


def _spans(ops, constant: set, position: dict) -> list[tuple[str, int, int, int]]:
    """(producer, port, its position, the last position reading it) of every tensor an operation
    reads later (not Constants', not Parameters': every part reads the model's inputs itself)."""
    spans = []
    for i, op in enumerate(ops):
        if op.get_friendly_name() in constant or op.get_type_name() == "Parameter":
            continue
        for port, output in enumerate(op.outputs()):
            last = max((position.get(t.get_node().get_friendly_name(), -1) for t in output.get_target_inputs()), default=-1)
            if last > i:
                spans.append((op.get_friendly_name(), port, i, last))
    return spans


def _crossing(spans: list, cut: int) -> list[tuple[str, int]]:
    """The (producer, port) tensors a cut before position `cut` crosses."""
    return [(producer, port) for producer, port, made, last in spans if made < cut <= last]


def _cut_positions(ops, position: dict, spans: list, parts: int) -> list[int]:
    """`parts - 1` positions to cut at: near each k/parts of the weight bytes, where the fewest tensors
    cross (and some do: a cut nothing crosses would leave a part empty)."""
    weight = np.zeros(len(ops))
    for op in ops:
        if op.get_type_name() == "Constant":
            readers = [position[t.get_node().get_friendly_name()] for t in op.output(0).get_target_inputs()
                       if t.get_node().get_friendly_name() in position]
            if readers:
                weight[min(readers)] += op.get_byte_size()
    share = np.cumsum(weight) / weight.sum()
    delta = np.zeros(len(ops) + 2, dtype=int)
    for _, _, made, last in spans:
        delta[made + 1] += 1
        delta[last + 1] -= 1
    live = np.cumsum(delta)[:len(ops)]
    cuts = []
    for k in range(1, parts):
        candidates = [i for i in range(1, len(ops)) if live[i] > 0 and i not in cuts]
        if not candidates:
            break
        distance = np.abs(share - k / parts)
        nearest = min(distance[i - 1] for i in candidates)
        cuts.append(min((i for i in candidates if distance[i - 1] <= max(WINDOW, nearest)),
                        key=lambda i: (live[i], distance[i - 1])))
    if len(cuts) < parts - 1:
        raise ValueError(f"the model cannot be cut into {parts} parts")
    return sorted(cuts)


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
