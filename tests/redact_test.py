"""Secret-looking values are masked wherever text is shown."""

import pytest

from transforms import redact
from transforms.kafka import config_refs

FAKE = 'hunter2-FAKE'


@pytest.mark.parametrize('key', [
    'sasl.password', 'sasl.username', 'sasl.oauthbearer.client.secret',
    'ssl.key.password', 'ssl.key.pem', 'ssl.keystore.password',
    'sasl.jaas.config', 'listener.name.x.plain.sasl.jaas.config',
    'api_token', 'client.secret', 'PASSWORD'])
def test_secret_looking_keys(key):
  assert redact.is_secret_key(key)
  assert FAKE not in redact.mask_text(f'{key}={FAKE}')
  assert FAKE not in redact.mask_arg(f'--kafka_config={key}={FAKE}')


@pytest.mark.parametrize('key', ['bootstrap.servers', 'security.protocol',
                                 'ssl.ca.location', 'acks', 'group.id'])
def test_other_keys_are_shown(key):
  assert not redact.is_secret_key(key)
  assert redact.mask_text(f'{key}=x') == f'{key}=x'


@pytest.mark.parametrize('text, expected', [
    (f"--kafka_config 'sasl.password:{FAKE}': expected KEY=VALUE",
     "--kafka_config 'sasl.password:***': expected KEY=VALUE"),
    (f"{{'bootstrap.servers': 'b:9092', 'sasl.password': '{FAKE}'}}",
     "{'bootstrap.servers': 'b:9092', 'sasl.password': '***'}"),
    (f'{{"sasl.password": "{FAKE}"}}', '{"sasl.password": "***"}'),
    (f'sasl.jaas.config=org.x.PlainLoginModule required username="u" '
     f'password="{FAKE}";',
     'sasl.jaas.config=*** required username="u" password="***";'),
    ('--kafka_config sasl.password=...: a secret on the command line',
     '--kafka_config sasl.password=***: a secret on the command line'),
    # References name where a secret is, not the secret: shown.
    ('--kafka_config=@secret:projects/p/secrets/kafka',
     '--kafka_config=@secret:projects/p/secrets/kafka'),
    ('sasl.password=@secret:projects/p/secrets/s/versions/2',
     'sasl.password=@secret:projects/p/secrets/s/versions/2'),
])
def test_mask_text(text, expected):
  assert redact.mask_text(text) == expected


def test_mask_args_masks_whole_values_and_split_flags():
  args = ['--kafka_config', f'sasl.jaas.config=org.x required '
          f'password="{FAKE}";', f'--kafka_config=sasl.password={FAKE}',
          '--sasl_password', FAKE, f'sasl.password {FAKE}',
          '--kafka_config=sasl.password=@secret:projects/p/secrets/s',
          '--input_topic', 'events']
  masked = redact.mask_secrets(args)
  assert FAKE not in ' '.join(masked)
  assert masked == ['--kafka_config', 'sasl.jaas.config=***',
                    '--kafka_config=sasl.password=***', '--sasl_password',
                    '***', 'sasl.password ***',
                    '--kafka_config=sasl.password=@secret:projects/p/secrets/s',
                    '--input_topic', 'events']


def test_module_prints_a_masked_shell_command(capsys):
  redact.main(['python', '-m', 'x', f'--kafka_config=sasl.password={FAKE}',
               '--labels=a b'])
  assert capsys.readouterr().out == (
      "python -m x '--kafka_config=sasl.password=***' '--labels=a b'\n")


@pytest.mark.parametrize('entry', [f'sasl.password:{FAKE}',
                                   f'sasl.password {FAKE}'])
def test_a_malformed_kafka_config_entry_is_not_echoed(entry):
  with pytest.raises(ValueError, match='expected KEY=VALUE') as e:
    config_refs.parse_entries([entry])
  assert FAKE not in str(e.value) and 'sasl.password' in str(e.value)
