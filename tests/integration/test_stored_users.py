"""Users, vhosts and permissions are durable, as in RabbitMQ: once created (here by boot
definitions) they survive a restart even when the definitions file is no longer loaded, and
the default user is not re-created on a node that already has users."""
import pika.exceptions
import pytest

from helpers import passwords
from helpers.clients import pika_channel_error, pika_connect

pytestmark = pytest.mark.timeout(120)

DEFINITIONS = passwords.definitions(
    users=[passwords.user("alice", "alice-pw", tags="administrator"),
           passwords.user("bob", "bob-pw")],
    vhosts=["/", "v1"],
    permissions=[passwords.permission("alice", "v1"),
                 passwords.permission("bob", "/", configure="^bob\\.", write=".*", read=".*")],
)


@pytest.fixture
def restarted_without_definitions(fresh_broker):
    b = fresh_broker(definitions=DEFINITIONS)
    if not hasattr(b, "definitions_path"):
        pytest.skip("needs a broker this suite starts and reconfigures")
    # Stop loading the file: whatever survives now came from the store.
    b.definitions_path = None
    b._write_config()
    b.restart(kill9=True)
    return b


def test_users_and_vhosts_survive_restart(restarted_without_definitions):
    b = restarted_without_definitions
    c = pika_connect(b, user="alice", password="alice-pw", vhost="v1")
    c.channel().queue_declare("alice.q")
    c.close()


def test_permissions_survive_restart(restarted_without_definitions):
    b = restarted_without_definitions
    c = pika_connect(b, user="bob", password="bob-pw")
    ch = c.channel()
    ch.queue_declare("bob.ok", auto_delete=True)
    code, text = pika_channel_error(lambda: ch.queue_declare("not-bob"))
    assert code == 403
    assert text == "ACCESS_REFUSED - access to queue 'not-bob' in vhost '/' refused for user 'bob'"
    c.close()


def test_wrong_password_still_refused_after_restart(restarted_without_definitions):
    b = restarted_without_definitions
    with pytest.raises((pika.exceptions.ProbableAuthenticationError, pika.exceptions.AuthenticationError)):
        pika_connect(b, user="alice", password="wrong", vhost="v1")


def test_default_user_not_recreated_once_users_exist(restarted_without_definitions):
    b = restarted_without_definitions
    with pytest.raises((pika.exceptions.ProbableAuthenticationError, pika.exceptions.AuthenticationError)):
        pika_connect(b)
