"""vitlib.serve: the API answers right on real Fashion-MNIST PNGs, and every bad input gets its 4xx."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

pytest.importorskip("fastapi")
from fastapi.testclient import TestClient  # noqa: E402

from vitlib.data import load_dataset  # noqa: E402
from vitlib.serve import MAX_BYTES, BackgroundServer, BadImage, Predictor, create_app  # noqa: E402
from vitlib.train import main as train_main  # noqa: E402


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    assert train_main(["--recipe", "fashion-mnist-small", "--epochs", "4", "--out", str(out), "--no-progress"]) == 0
    return out / "last.pt"


@pytest.fixture(scope="module")
def client(trained):
    return TestClient(create_app(Predictor.from_checkpoint(trained)))


def png(array: torch.Tensor) -> bytes:
    """uint8 (H, W) or (H, W, 3) -> PNG bytes."""
    buffer = io.BytesIO()
    Image.fromarray(array.numpy()).save(buffer, format="PNG")
    return buffer.getvalue()


def post(client, data: bytes, content_type: str = "image/png"):
    return client.post("/predict", files={"file": ("image.png", data, content_type)})


def test_health_and_page(client):
    health = client.get("/health")
    assert health.status_code == 200 and health.json()["status"] == "ok" and len(health.json()["classes"]) == 10
    page = client.get("/")
    assert page.status_code == 200 and "<canvas" in page.text and "predict" in page.text


def test_predicts_the_right_class_of_fashion_mnist_pngs_as_the_model_does(client, trained):
    predictor = Predictor.from_checkpoint(trained)
    test = load_dataset("fashion-mnist-small", "test")
    with torch.no_grad():
        direct = predictor.model(predictor.transform(test.images[:40])).argmax(dim=-1)  # (40,)
    right = [i for i in range(40) if direct[i] == test.labels[i]][:8]
    assert len(right) >= 6
    for i in right:
        answer = post(client, png(test.images[i, 0]))
        assert answer.status_code == 200, answer.text
        body = answer.json()
        assert body["top_k"][0]["label"] == test.classes[test.labels[i]]
        assert abs(sum(body["probabilities"].values()) - 1) < 1e-4
        grid = torch.tensor(body["rollout"])
        assert grid.shape == (4, 4) and grid.max() == pytest.approx(1.0)


def test_rgb_jpeg_of_another_size_on_a_white_page_is_understood(client):
    test = load_dataset("fashion-mnist-small", "test")
    image = Image.fromarray((255 - test.images[0, 0]).numpy()).resize((140, 140)).convert("RGB")  # dark on white
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=95)
    answer = post(client, buffer.getvalue(), "image/jpeg")
    assert answer.status_code == 200 and "top_k" in answer.json()


@pytest.mark.parametrize(
    "make, content_type, status, message",
    [
        (lambda: b"", "image/png", 400, "empty"),
        (lambda: b"this is not an image", "image/png", 400, "could not read an image"),
        (lambda: b"\x89PNG\r\n\x1a\n" + b"\x00" * 100, "image/png", 400, "could not read an image"),
        (lambda: b"0" * (MAX_BYTES + 10), "image/png", 413, "limit"),
        (lambda: png(torch.zeros(8000, 6000, dtype=torch.uint8)), "image/png", 413, "pixels"),
        (lambda: png(torch.zeros(28, 28, dtype=torch.uint8)), "text/plain", 415, "content type"),
    ],
)
def test_bad_input_gets_a_4xx_and_the_server_keeps_serving(client, make, content_type, status, message):
    answer = post(client, make(), content_type)
    assert answer.status_code == status, answer.text
    assert message in answer.json()["detail"]
    assert client.get("/health").status_code == 200


def test_no_file_field_is_a_422(client):
    assert client.post("/predict", data={"x": "1"}).status_code == 422
    assert client.get("/health").status_code == 200


def test_the_command_serves_a_trained_checkpoint_on_localhost(trained, tmp_path):
    """`python -m vitlib.serve CHECKPOINT --port P` in its own process (BackgroundServer, as week 08 starts it):
    /health, then a PNG of a Fashion-MNIST image, then stopped."""
    import httpx

    predictor = Predictor.from_checkpoint(trained)
    test = load_dataset("fashion-mnist-small", "test")
    with torch.no_grad():
        direct = predictor.model(predictor.transform(test.images[:20])).argmax(dim=-1)
    i = next(i for i in range(20) if direct[i] == test.labels[i])
    with BackgroundServer(trained, log=tmp_path / "server.log") as server:
        assert server.url.startswith("http://127.0.0.1:") and server.running
        answer = httpx.post(f"{server.url}/predict", files={"file": ("shirt.png", png(test.images[i, 0]), "image/png")})
        assert answer.status_code == 200 and answer.json()["top_k"][0]["label"] == test.classes[test.labels[i]]
    assert not server.running
    assert "Uvicorn running on http://127.0.0.1" in (tmp_path / "server.log").read_text()


def test_background_server_reports_why_it_did_not_start(tmp_path):
    with pytest.raises(RuntimeError, match=r"(?s)stopped with exit code 2.*error: no checkpoint at"):
        BackgroundServer(tmp_path / "nope.pt", log=tmp_path / "server.log", timeout=30)


def test_predictor_answers_python_callers_with_the_same_rules(trained):
    predictor = Predictor.from_checkpoint(trained)
    test = load_dataset("fashion-mnist-small", "test")
    answer = predictor.predict(png(test.images[0, 0]), "image/png", top_k=20)
    assert len(answer["top_k"]) == 10 and answer["top_k"][0]["probability"] >= answer["top_k"][-1]["probability"]
    with pytest.raises(BadImage) as info:
        predictor.predict(b"", "image/png")
    assert info.value.status == 400


def test_the_command_reports_a_missing_checkpoint_in_one_line(tmp_path):
    import subprocess
    import sys

    result = subprocess.run([sys.executable, "-m", "vitlib.serve", str(tmp_path / "nope.pt")], capture_output=True, text=True)
    assert result.returncode == 2 and result.stderr.startswith("error: no checkpoint at")


def test_the_command_refuses_a_gpu_it_does_not_have(trained):
    import subprocess
    import sys

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU: --device cuda is valid here")
    result = subprocess.run([sys.executable, "-m", "vitlib.serve", str(trained), "--device", "cuda"],
                            capture_output=True, text=True)
    assert result.returncode == 2 and result.stderr.startswith("error: device 'cuda' asked for, but PyTorch sees no CUDA GPU")


def test_a_fashion_mnist_png_is_served_as_the_training_image_it_is(trained):
    """Training–serving skew: crop to the object, pad (the extra row on top), resize gives back the image itself."""
    predictor = Predictor.from_checkpoint(trained)
    test = load_dataset("fashion-mnist-small", "test")
    served = torch.cat([predictor.image_tensor(png(test.images[i, 0])) for i in range(200)])  # (200, 1, 28, 28)
    exact = (served == test.images[:200]).flatten(1).all(dim=1).float().mean().item()
    assert exact >= 0.8, f"only {exact:.0%} of the PNGs come back pixel for pixel"


def test_a_drawing_on_a_wide_white_page_is_cropped_inverted_and_classified_like_the_original(trained):
    predictor = Predictor.from_checkpoint(trained)
    test = load_dataset("fashion-mnist-small", "test")
    same = 0
    for i in range(100):
        page = Image.new("L", (150, 90), 255)
        page.paste(Image.fromarray((255 - test.images[i, 0]).numpy()).resize((60, 60)), (70, 20))  # off centre
        served = predictor.image_tensor(png(torch.from_numpy(np.array(page))))
        with torch.no_grad():
            a, b = predictor.model(predictor.transform(torch.cat([served, test.images[i : i + 1]]))).argmax(-1)
        same += int(a == b)
    assert same >= 85, f"{same} of 100 drawings get the class of their original"


def test_crop_to_object_finds_the_bounding_box_and_leaves_a_blank_image_alone():
    from vitlib.serve import crop_to_object

    image = torch.zeros(1, 10, 12, dtype=torch.uint8)
    image[0, 2:5, 3:9] = 200
    image[0, 7, 0] = 5  # below the threshold: noise, not the object
    assert crop_to_object(image, 0).shape == (1, 3, 6)
    blank = torch.full((3, 4, 4), 255, dtype=torch.uint8)
    assert torch.equal(crop_to_object(blank, 255), blank)


def test_the_answer_says_which_square_of_the_upload_the_model_saw(trained):
    predictor = Predictor.from_checkpoint(trained)
    garment = torch.zeros(60, 40, dtype=torch.uint8)
    garment[:, 5:35] = 200  # a 60 × 30 object on a dark page
    page = torch.zeros(90, 150, dtype=torch.uint8)
    page[20:80, 70:110] = garment
    region = predictor.predict(png(page))["region"]
    # the object's box is rows 20-79, columns 75-104: a 60-pixel square around it, the odd column on the left
    assert region == {"left": 60, "top": 20, "size": 60, "width": 150, "height": 90}
