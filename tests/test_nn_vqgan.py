import torch

from arvision.nn.vqgan import Decoder, Encoder


def test_encoder_decoder_shapes_and_downsampling():
    torch.manual_seed(0)
    enc = Encoder(ch=32, ch_mult=(1, 2, 2), z_channels=8)
    dec = Decoder(ch=32, ch_mult=(1, 2, 2), z_channels=8)
    x = torch.randn(2, 3, 32, 32)
    z = enc(x)
    assert z.shape == (2, 8, 8, 8)
    assert dec(z).shape == (2, 3, 32, 32)


def test_attention_only_at_lowest_level_by_default():
    enc = Encoder(ch=32, ch_mult=(1, 1, 2), z_channels=4)
    assert [len(stage.attn) for stage in enc.down] == [0, 0, 2]
    dec = Decoder(ch=32, ch_mult=(1, 1, 2), z_channels=4)
    assert [len(stage.attn) for stage in dec.up] == [0, 0, 3]
    assert [len(stage.block) for stage in dec.up] == [3, 3, 3]
