"""torch.compile, in place, for training and for the pipeline's UNet.

The tests compile with the "aot_eager" backend: it traces the model with Dynamo and runs AOTAutograd's
forward/backward graphs (the parts that can break a model's compile or its saved weights) without
generating C++ kernels, which take minutes on a 2-core CPU. One test compiles a forward pass with the
default "inductor" backend to show the real path works here.
"""

import json

import pytest
import torch
from safetensors.torch import load_file

from conftest import TINY_ARGS, tiny_pipeline, tiny_unet
from denoising_diffusion import ContinuousUNet2DModel, compile_unet
from denoising_diffusion.training import ConfigError, parse_config, train


def unet_weights(folder):
    return load_file(str(folder / "unet" / "diffusion_pytorch_model.safetensors"))


def test_compiled_unet_keeps_its_class_names_and_outputs(tmp_path):
    torch._dynamo.reset()
    unet = tiny_unet().eval()
    x, t = torch.randn(3, 1, 8, 8, generator=torch.Generator().manual_seed(0)), torch.tensor([0.1, 0.5, 0.9])
    with torch.no_grad():
        eager = unet(x, t).sample
        keys = set(unet.state_dict())
        compile_unet(unet, backend="aot_eager")
        compiled = unet(x, t).sample
    assert isinstance(unet, ContinuousUNet2DModel)
    assert set(unet.state_dict()) == keys  # no "_orig_mod." prefixes
    torch.testing.assert_close(compiled, eager, rtol=1e-5, atol=1e-5)
    unet.save_pretrained(tmp_path / "unet")
    reloaded = ContinuousUNet2DModel.from_pretrained(tmp_path / "unet").eval()
    with torch.no_grad():
        torch.testing.assert_close(reloaded(x, t).sample, eager, rtol=1e-5, atol=1e-5)


def test_pipeline_with_a_compiled_unet_gives_the_same_images():
    torch._dynamo.reset()
    pipe = tiny_pipeline()
    eager = pipe(batch_size=2, num_inference_steps=4, generator=torch.Generator().manual_seed(0), output_type="pt")
    pipe.unet = compile_unet(pipe.unet, backend="aot_eager")
    compiled = pipe(batch_size=2, num_inference_steps=4, generator=torch.Generator().manual_seed(0), output_type="pt")
    torch.testing.assert_close(compiled.images, eager.images, rtol=1e-4, atol=1e-4)


def test_forward_compiles_as_one_graph_and_eager_calls_still_check_times():
    # the range check reads the times back: inside torch.compile it is skipped so the forward stays one graph
    torch._dynamo.reset()
    unet = tiny_unet().eval()
    x, t = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(2)), torch.tensor([0.3, 0.8])
    with torch.no_grad():
        eager = unet(x, t).sample
        compiled = torch.compile(unet.forward, backend="aot_eager", fullgraph=True)(x, t).sample  # no graph break
        torch.testing.assert_close(compiled, eager, rtol=1e-5, atol=1e-5)
        with pytest.raises(ValueError, match="got a value of 1.5"):
            unet(x, torch.tensor([0.3, 1.5]))


def test_inductor_compiles_a_forward_pass_on_this_machine():
    torch._dynamo.reset()
    unet = tiny_unet().eval()
    x, t = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(1)), torch.tensor([0.2, 0.7])
    with torch.no_grad():
        eager = unet(x, t).sample
        compile_unet(unet)  # inductor: generates and builds C++ kernels
        torch.testing.assert_close(unet(x, t).sample, eager, rtol=1e-4, atol=1e-4)


def test_compiled_training_matches_eager_and_resumes_without_compile(tmp_path):
    torch._dynamo.reset()
    common = TINY_ARGS + ["--max_train_steps", "4", "--checkpointing_steps", "2"]
    eager = train(parse_config(common + ["--output_dir", str(tmp_path / "eager")]))
    compiled = train(parse_config(common + ["--output_dir", str(tmp_path / "compiled"), "--compile",
                                            "--compile_backend", "aot_eager"]))
    a, b = unet_weights(eager), unet_weights(compiled)
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(b[key], a[key], rtol=1e-4, atol=1e-5, msg=key)
    # A compiled run's checkpoint has plain parameter names, and an eager run resumes from it to where
    # an eager run of the same length gets.
    checkpoint = load_file(str(compiled / "checkpoint-4" / "model.safetensors"))
    assert not any("_orig_mod" in key for key in checkpoint)
    six = TINY_ARGS + ["--max_train_steps", "6", "--checkpointing_steps", "2"]
    straight = train(parse_config(six + ["--output_dir", str(tmp_path / "straight")]))
    resumed = train(parse_config(six + ["--output_dir", str(tmp_path / "compiled"), "--resume_from_checkpoint", "latest"]))
    assert json.loads((resumed / "training_summary.json").read_text())["global_step"] == 6
    after_four = b
    a, b = unet_weights(straight), unet_weights(resumed)
    assert not torch.equal(b["conv_in.weight"], after_four["conv_in.weight"])  # it trained on
    for key in a:
        torch.testing.assert_close(b[key], a[key], rtol=1e-4, atol=1e-5, msg=key)


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--compile_backend", "inductr"], r"compile_backend='inductr' is not valid; expected one of \(.*'inductor'"),
        (["--compile_mode", "fastest"], r"compile_mode='fastest' is not valid; expected one of \('default'"),
    ],
)
def test_bad_compile_options_are_named(tmp_path, extra, message):
    with pytest.raises(ConfigError, match=message):
        parse_config(TINY_ARGS + ["--output_dir", str(tmp_path), "--compile", *extra])
    with pytest.raises(ValueError, match=message.replace("compile_", "", 1)):
        compile_unet(tiny_unet(), *(["inductr"] if "backend" in extra[0] else ["inductor", "fastest"]))
