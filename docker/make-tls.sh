#!/usr/bin/env bash
# A CA, a server certificate for the compose services and a client certificate, in docker/tls/.
# For trying the production profile; in production, use your own CA and rotate.
set -euo pipefail
cd "$(dirname "$0")/tls"
openssl req -x509 -newkey rsa:2048 -nodes -days 365 -keyout ca.key -out ca.pem \
  -subj "/CN=satellites-es CA" -addext basicConstraints=critical,CA:TRUE \
  -addext keyUsage=critical,keyCertSign,cRLSign
printf 'subjectAltName=DNS:postgres,DNS:redis,DNS:rabbitmq,DNS:elasticsearch,DNS:localhost\nextendedKeyUsage=serverAuth\n' > server.ext
printf 'extendedKeyUsage=clientAuth\n' > client.ext
for name in server client; do
  openssl req -newkey rsa:2048 -nodes -keyout "$name.key" -out "$name.csr" -subj "/CN=satellites-es $name"
  openssl x509 -req -in "$name.csr" -CA ca.pem -CAkey ca.key -CAcreateserial -days 365 \
    -out "$name.pem" -extfile "$name.ext"
done
chmod 0644 ./*.pem && chmod 0640 ./*.key
