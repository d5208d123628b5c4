"""RabbitMQ password hashes for definitions files.

rabbit_password_hashing_sha256 stores base64(salt || SHA-256(salt || utf8(password)))
with a 4-byte random salt; the broker recomputes the digest with the stored salt.
"""
import base64
import hashlib
import os

SHA256 = "rabbit_password_hashing_sha256"


def rabbit_sha256_hash(password, salt=None):
    salt = os.urandom(4) if salt is None else salt
    assert len(salt) == 4
    digest = hashlib.sha256(salt + password.encode("utf-8")).digest()
    return base64.b64encode(salt + digest).decode("ascii")


def user(name, password, tags=""):
    return {"name": name, "password_hash": rabbit_sha256_hash(password),
            "hashing_algorithm": SHA256, "tags": tags}


def permission(user_name, vhost="/", configure=".*", write=".*", read=".*"):
    return {"user": user_name, "vhost": vhost, "configure": configure,
            "write": write, "read": read}


def definitions(users, vhosts=("/",), permissions=(), **extra):
    doc = {"users": list(users), "vhosts": [{"name": v} for v in vhosts],
           "permissions": list(permissions)}
    doc.update(extra)
    return doc
