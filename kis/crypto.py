"""AES-256-CBC decryption of real-time notices (H0STCNI0/H0STCNI9).

Key (32 ASCII chars) and iv (16 ASCII chars) come from the subscribe ack and are valid for that
TR in that websocket session only. Payload = base64(ciphertext), PKCS7 padding.
"""

from __future__ import annotations

import base64
import binascii

from cryptography.hazmat.primitives import padding
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes


class DecryptError(ValueError):
    pass


class NoticeCipher:
    __slots__ = ("_key", "_iv")

    def __init__(self, key: str, iv: str) -> None:
        k, v = key.encode(), iv.encode()
        if len(k) != 32 or len(v) != 16:
            raise DecryptError(f"bad AES key/iv length {len(k)}/{len(v)} (want 32/16)")
        self._key, self._iv = k, v

    def __repr__(self) -> str:  # the key is a session secret
        return "NoticeCipher(<key>)"

    def decrypt(self, payload: str) -> str:
        try:
            data = base64.b64decode(payload, validate=False)
        except (binascii.Error, ValueError) as e:
            raise DecryptError(f"not base64: {e}") from None
        if not data or len(data) % 16:
            raise DecryptError(f"ciphertext length {len(data)} is not a multiple of 16")
        dec = Cipher(algorithms.AES(self._key), modes.CBC(self._iv)).decryptor()
        padded = dec.update(data) + dec.finalize()
        unpad = padding.PKCS7(128).unpadder()
        try:
            plain = unpad.update(padded) + unpad.finalize()
        except ValueError:
            raise DecryptError("bad PKCS7 padding (wrong key/iv?)") from None
        return plain.decode("utf-8", errors="replace")

    def encrypt(self, text: str) -> str:
        """For tests and the bench: the inverse of decrypt."""
        pad = padding.PKCS7(128).padder()
        data = pad.update(text.encode()) + pad.finalize()
        enc = Cipher(algorithms.AES(self._key), modes.CBC(self._iv)).encryptor()
        return base64.b64encode(enc.update(data) + enc.finalize()).decode()
