"""Build tiny FunASR model directories with random weights, for offline tests.

Each directory has the layout of a real FunASR model download, and its model.pt is the
state_dict of funasr's own model class built from that config, so `funasr.AutoModel(model=DIR)`
loads it through the same code path as real weights. They recognise nothing (the weights are
random) but every stage runs: fbank front end, encoder, decoding and token lookup.

- `build_tiny_paraformer`: config.yaml, tokens.txt, model.pt (the paraformer-zh layout). Two
  32-wide SANM encoder and decoder blocks and a CIF predictor: about 90k parameters.
- `build_tiny_sensevoice`: config.yaml, configuration.json, a SentencePiece model named like
  SenseVoiceSmall's, model.pt (the iic/SenseVoiceSmall layout). Its vocabulary holds
  SenseVoice's `<|...|>` tags, so random output exercises tag stripping.

Needs funasr and torch; import it only from tests that `pytest.importorskip("funasr")`.
"""

from __future__ import annotations

from pathlib import Path

# Characters only: the CharTokenizer maps ids to these and joins them, so the transcript of a
# random model is a string of them. 0-2 and the last id are the ids Paraformer reserves.
TOKENS = ["<blank>", "<s>", "</s>", *"abcdefghijklmnopqrstuvwxyz", "的", "是", "我", "<unk>"]

CONFIG_YAML = """\
# A tiny Paraformer for tests: the shape of a real paraformer-zh config, shrunk.
model: Paraformer
model_conf:
    ctc_weight: 0.0
    lsm_weight: 0.1
    length_normalized_loss: true
    predictor_weight: 1.0
    predictor_bias: 1
    sampling_ratio: 0.75
encoder: SANMEncoder
encoder_conf:
    output_size: 32
    attention_heads: 2
    linear_units: 32
    num_blocks: 2
    dropout_rate: 0.0
    positional_dropout_rate: 0.0
    attention_dropout_rate: 0.0
    input_layer: pe
    pos_enc_class: SinusoidalPositionEncoder
    normalize_before: true
    kernel_size: 11
    sanm_shfit: 0
    selfattention_layer_type: sanm
decoder: ParaformerSANMDecoder
decoder_conf:
    attention_heads: 2
    linear_units: 32
    num_blocks: 2
    dropout_rate: 0.0
    positional_dropout_rate: 0.0
    self_attention_dropout_rate: 0.0
    src_attention_dropout_rate: 0.0
    att_layer_num: 2
    kernel_size: 11
    sanm_shfit: 0
predictor: CifPredictorV2
predictor_conf:
    idim: 32
    threshold: 1.0
    l_order: 1
    r_order: 1
    tail_threshold: 0.45
frontend: WavFrontend
frontend_conf:
    fs: 16000
    window: hamming
    n_mels: 80
    frame_length: 25
    frame_shift: 10
    lfr_m: 7
    lfr_n: 6
    dither: 0.0
tokenizer: CharTokenizer
tokenizer_conf:
    unk_symbol: <unk>
    split_with_space: true
    token_list: tokens.txt
ctc_conf:
    dropout_rate: 0.0
    ctc_type: builtin
    reduce: true
    ignore_nan_grad: true
normalize: null
"""


# What turns the Paraformer above into SeACo-Paraformer (the paraformer-zh checkpoint, which
# takes hotwords): a bias encoder, a hotword decoder and the BiCIF predictor. NO_BIAS is the id
# the model reserves for "no hotword here": the last one, as 8377 is in the real 8404 vocabulary.
SEACO_CONFIG_YAML = CONFIG_YAML.replace("model: Paraformer", "model: SeacoParaformer").replace(
    "    sampling_ratio: 0.75\n",
    f"""    sampling_ratio: 0.75
    inner_dim: 32
    bias_encoder_type: lstm
    bias_encoder_bid: false
    seaco_lsm_weight: 0.1
    seaco_length_normalized_loss: true
    NO_BIAS: {len(TOKENS) - 1}
seaco_decoder: ParaformerSANMDecoder
seaco_decoder_conf:
    attention_heads: 2
    linear_units: 32
    num_blocks: 1
    dropout_rate: 0.0
    positional_dropout_rate: 0.0
    self_attention_dropout_rate: 0.0
    src_attention_dropout_rate: 0.0
    kernel_size: 21
    sanm_shfit: 0
    use_output_layer: false
    wo_input_layer: true
""",
).replace(
    """predictor: CifPredictorV2
predictor_conf:
    idim: 32
    threshold: 1.0
    l_order: 1
    r_order: 1
    tail_threshold: 0.45
""",
    """predictor: CifPredictorV3
predictor_conf:
    idim: 32
    threshold: 1.0
    l_order: 1
    r_order: 1
    tail_threshold: 0.45
    smooth_factor2: 0.25
    noise_threshold2: 0.01
    upsample_times: 3
    use_cif1_cnn: false
    upsample_type: cnn_blstm
""",
)


def build_tiny_paraformer(directory: Path, *, seed: int = 0, seaco: bool = False) -> Path:
    """Write config.yaml, tokens.txt and a random-weight model.pt into `directory`; return it.

    `seaco=True` builds a SeACo-Paraformer, the hotword-biasing variant.
    """
    import torch
    import yaml
    from funasr.register import tables

    import funasr  # noqa: F401  (importing the package registers the model classes)

    config_yaml = SEACO_CONFIG_YAML if seaco else CONFIG_YAML
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "config.yaml").write_text(config_yaml, encoding="utf-8")
    (directory / "tokens.txt").write_text("\n".join(TOKENS) + "\n", encoding="utf-8")

    config = yaml.safe_load(config_yaml)
    frontend = config["frontend_conf"]
    model_class = tables.model_classes.get(config["model"])
    torch.manual_seed(seed)
    model = model_class(
        **config["model_conf"],
        encoder=config["encoder"],
        encoder_conf=config["encoder_conf"],
        decoder=config["decoder"],
        decoder_conf=config["decoder_conf"],
        predictor=config["predictor"],
        predictor_conf=config["predictor_conf"],
        ctc_conf=config["ctc_conf"],
        **{key: config[key] for key in ("seaco_decoder", "seaco_decoder_conf") if key in config},
        # What AutoModel passes: the LFR-stacked fbank width and the token count.
        input_size=frontend["n_mels"] * frontend["lfr_m"],
        vocab_size=len(TOKENS),
    )
    torch.save(model.state_dict(), directory / "model.pt")
    return directory


def parameter_count(directory: Path) -> int:
    """How many parameters the model.pt in `directory` holds (to keep the fixture tiny)."""
    import torch

    state = torch.load(Path(directory) / "model.pt", map_location="cpu", weights_only=True)
    return sum(int(t.numel()) for t in state.values())


# SenseVoice's special tags (language, emotion, event, ITN): user-defined pieces of its
# SentencePiece vocabulary, so a random CTC head can emit them as the real one does.
SENSEVOICE_TAGS = [
    "<|zh|>", "<|en|>", "<|yue|>", "<|ja|>", "<|ko|>", "<|nospeech|>",
    "<|HAPPY|>", "<|SAD|>", "<|ANGRY|>", "<|NEUTRAL|>", "<|EMO_UNKNOWN|>",
    "<|Speech|>", "<|BGM|>", "<|Laughter|>", "<|Event_UNK|>", "<|withitn|>", "<|woitn|>",
]
SENSEVOICE_BPE = "chn_jpn_yue_eng_ko_spectok.bpe.model"

SENSEVOICE_CONFIG_YAML = """\
# A tiny SenseVoiceSmall for tests: the shape of iic/SenseVoiceSmall's config, shrunk.
model: SenseVoiceSmall
model_conf:
    length_normalized_loss: true
    sos: 1
    eos: 2
    ignore_id: -1
encoder: SenseVoiceEncoderSmall
encoder_conf:
    output_size: 32
    attention_heads: 2
    linear_units: 32
    num_blocks: 2
    tp_blocks: 1
    dropout_rate: 0.0
    positional_dropout_rate: 0.0
    attention_dropout_rate: 0.0
    input_layer: pe
    pos_enc_class: SinusoidalPositionEncoder
    normalize_before: true
    kernel_size: 11
    sanm_shfit: 0
    selfattention_layer_type: sanm
tokenizer: SentencepiecesTokenizer
tokenizer_conf:
    bpemodel: null
    unk_symbol: <unk>
    split_with_space: true
frontend: WavFrontend
frontend_conf:
    fs: 16000
    window: hamming
    n_mels: 80
    frame_length: 25
    frame_shift: 10
    lfr_m: 7
    lfr_n: 6
ctc_conf:
    dropout_rate: 0.0
"""

SENSEVOICE_CONFIGURATION_JSON = {
    "framework": "pytorch",
    "task": "auto-speech-recognition",
    "model": {"type": "funasr"},
    "pipeline": {"type": "funasr-pipeline"},
    "file_path_metas": {
        "init_param": "model.pt",
        "config": "config.yaml",
        "tokenizer_conf": {"bpemodel": SENSEVOICE_BPE},
    },
}


def build_tiny_sensevoice(directory: Path, *, seed: int = 0, favour: str = "") -> Path:
    """Write a SenseVoiceSmall-shaped directory with a tiny random model; return it.

    `favour`: a vocabulary piece (say "<|ja|>") whose CTC output bias is raised so far that the
    model emits it and nothing else, to test what the engine does with SenseVoice's tags.
    """
    import io
    import json

    import sentencepiece as spm
    import torch
    import yaml
    from funasr.register import tables

    import funasr  # noqa: F401  (importing the package registers the model classes)

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "config.yaml").write_text(SENSEVOICE_CONFIG_YAML, encoding="utf-8")
    (directory / "configuration.json").write_text(json.dumps(SENSEVOICE_CONFIGURATION_JSON, indent=2), encoding="utf-8")

    corpus = ["hello world this is a tiny test", "the quick brown fox jumps over the lazy dog", "你好世界", "こんにちは"]
    bpe = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(corpus * 4),
        model_writer=bpe,
        vocab_size=80,
        model_type="unigram",
        user_defined_symbols=SENSEVOICE_TAGS,
        hard_vocab_limit=False,
        minloglevel=2,
    )
    (directory / SENSEVOICE_BPE).write_bytes(bpe.getvalue())
    pieces = spm.SentencePieceProcessor(model_proto=bpe.getvalue())
    vocab_size = pieces.get_piece_size()

    config = yaml.safe_load(SENSEVOICE_CONFIG_YAML)
    frontend = config["frontend_conf"]
    model_class = tables.model_classes.get(config["model"])
    torch.manual_seed(seed)
    model = model_class(
        **config["model_conf"],
        encoder=config["encoder"],
        encoder_conf=config["encoder_conf"],
        ctc_conf=config["ctc_conf"],
        input_size=frontend["n_mels"] * frontend["lfr_m"],
        vocab_size=vocab_size,
    )
    if favour:
        with torch.no_grad():
            model.ctc.ctc_lo.bias[pieces.piece_to_id(favour)] += 1000.0
    torch.save(model.state_dict(), directory / "model.pt")
    return directory


FSMN_VAD_CONFIG_YAML = """\
# A tiny fsmn-vad for tests: the shape of iic/speech_fsmn_vad_zh-cn-16k-common-pytorch, shrunk.
frontend: WavFrontendOnline
frontend_conf:
    fs: 16000
    window: hamming
    n_mels: 80
    frame_length: 25
    frame_shift: 10
    dither: 0.0
    lfr_m: 5
    lfr_n: 1
model: FsmnVADStreaming
model_conf:
    sample_rate: 16000
    detect_mode: 1
    max_end_silence_time: 800
    max_start_silence_time: 3000
    window_size_ms: 200
    sil_to_speech_time_thres: 150
    speech_to_sil_time_thres: 150
    max_single_segment_time: 60000
    speech_noise_thres: 0.6
    silence_pdf_num: 1
    sil_pdf_ids: [0]
encoder: FSMN
encoder_conf:
    input_dim: 400
    input_affine_dim: 16
    fsmn_layers: 1
    linear_dim: 16
    proj_dim: 8
    lorder: 4
    rorder: 0
    lstride: 1
    rstride: 0
    output_affine_dim: 16
    output_dim: 8
"""


def build_tiny_vad(directory: Path, *, seed: int = 0) -> Path:
    """Write an fsmn-vad-shaped directory (config.yaml, model.pt) with a tiny random model."""
    import torch
    import yaml
    from funasr.register import tables

    import funasr  # noqa: F401  (importing the package registers the model classes)

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "config.yaml").write_text(FSMN_VAD_CONFIG_YAML, encoding="utf-8")
    config = yaml.safe_load(FSMN_VAD_CONFIG_YAML)
    torch.manual_seed(seed)
    model = tables.model_classes.get(config["model"])(
        encoder=config["encoder"], encoder_conf=config["encoder_conf"], **config["model_conf"]
    )
    torch.save(model.state_dict(), directory / "model.pt")
    return directory
