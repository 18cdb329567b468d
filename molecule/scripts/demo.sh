#!/usr/bin/env bash
# make demo / make demo-down: the full fleet in containers, deployed by the real playbook, with mail sent
# through it and a report of where each message went.
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
cd "$root"
action="${1:-up}"

if [ "$action" = down ]; then
  export PATH="$root/.venv/bin:$PATH" HOME="$root/.molecule-home"
  export ANSIBLE_COLLECTIONS_PATH="$root/.cache/ansible-collections"
  if docker info >/dev/null 2>&1; then molecule destroy -s demo; fi
  echo "demo: removed"
  exit 0
fi

# shellcheck source=molecule/scripts/controller-env.sh
source molecule/scripts/controller-env.sh
echo "demo: creating the containers and converging them with mailfleet.fleet.site (log: .molecule-home/demo.log)"
molecule destroy -s demo >/dev/null 2>&1
for step in create prepare converge; do
  molecule "$step" -s demo >>"$HOME/demo.log" 2>&1 || { tail -40 "$HOME/demo.log"; echo "demo: $step failed" >&2; exit 1; }
done

x() { docker exec "$@"; }
mp() { docker exec "$1" python3 /usr/local/bin/mailprobe "${@:2}"; }
ip() { "$root/molecule/scripts/container-ip.sh" "$1"; }
for h in in.demo.test mail.demo.test backup.demo.test out.demo.test world.internet.test; do
  docker cp molecule/shared/files/mailprobe.py "$h:/usr/local/bin/mailprobe" >/dev/null
done
tag="demo-$(date +%H%M%S)"
line() { printf '%s\n' "------------------------------------------------------------------------------"; }

echo; line; echo "Mailfleet demo: sending mail through the fleet"; line
printf '%-22s %-15s %s\n' host address roles
for h in in.demo.test:incoming_gateway mail.demo.test:primary backup.demo.test:backup_mx \
         out.demo.test:outgoing_gateway world.internet.test:"internet (BIND + Postfix)"; do
  printf '%-22s %-15s %s\n' "${h%%:*}" "$(ip "${h%%:*}")" "${h#*:}"
done
echo; echo "DNS as the internet sees it (named on world.internet.test, filled by dns_records over RFC 2136):"
x world.internet.test dig +short MX demo.test @127.0.0.1 | sed 's/^/  MX /'

echo; echo "1. An outside Postfix sends to alice@demo.test, finding the fleet by MX only"
printf 'From: carol@internet.test\nTo: alice@demo.test\nSubject: %s-1 via MX\n\nhello\n' "$tag" \
  | x -i world.internet.test /usr/sbin/sendmail -f carol@internet.test alice@demo.test
sleep 2
x world.internet.test journalctl -q -t postfix/smtp --no-pager | grep 'to=<alice@demo.test>' | tail -1 \
  | sed -E 's/.*(relay=[^,]*).*(status=.*)/   postfix on world: \1 \2/'
echo "   stored: $(mp mail.demo.test maildir --root /var/lib/mailfleet/mail --subject "$tag-1 via MX") (mail.demo.test)"

echo; echo "2. The incoming gateway is stopped; the same sender falls back to the backup MX (MX 20)"
x in.demo.test systemctl stop mailfleet
printf 'From: carol@internet.test\nTo: bob@demo.test\nSubject: %s-2 via backup\n\nhello\n' "$tag" \
  | x -i world.internet.test /usr/sbin/sendmail -f carol@internet.test bob@demo.test
sleep 3
x world.internet.test journalctl -q -t postfix/smtp --no-pager | grep 'to=<bob@demo.test>' | tail -1 \
  | sed -E 's/.*(relay=[^,]*).*(status=.*)/   postfix on world: \1 \2/'
echo "   stored: $(mp mail.demo.test maildir --root /var/lib/mailfleet/mail --subject "$tag-2 via backup") (mail.demo.test)"
x in.demo.test systemctl start mailfleet

echo; echo "3. alice submits (587, STARTTLS, AUTH) to carol@internet.test: primary -> outgoing gateway -> MX"
echo "   $(mp mail.demo.test send --port 587 --starttls --auth alice@demo.test alice-secret \
  --sender alice@demo.test --to carol@internet.test --subject "$tag-3 outbound") (mail.demo.test)"
found="$(mp world.internet.test maildir --root /home/carol/Maildir --subject "$tag-3 outbound" --timeout 60)"
echo "   stored: $found (world.internet.test)"
echo "   trace:"; x world.internet.test grep -h '^Received: from' "$found" | sed 's/^/     /'

p="$(ip mail.demo.test)"
echo; line; echo "Reach the primary from this machine (self-signed certificate; users alice@demo.test / alice-secret,"
echo "bob@demo.test / bob-secret):"; line
echo "  IMAP        $p:143  (STARTTLS)     e.g. python3 -c \"import imaplib,ssl; c=imaplib.IMAP4('$p'); c.starttls(ssl._create_unverified_context()); c.login('alice@demo.test','alice-secret'); print(c.select('INBOX'))\""
echo "  POP3        $p:110  (STLS)"
echo "  submission  $p:587  (STARTTLS + AUTH) e.g. swaks --server $p:587 -tls --auth-user alice@demo.test --auth-password alice-secret --to bob@demo.test"
echo "  SMTP (MX)   $(ip in.demo.test):25 (incoming gateway)"
echo "  queues      docker exec backup.demo.test /opt/mailfleet/venv/bin/mailfleet --config /etc/mailfleet/mailfleet.yml queue list"
echo "  shell       docker exec -it mail.demo.test bash"
echo "  inventory   molecule/demo/inventory/ (playbook: mailfleet.fleet.site, from build/collection/)"
echo "Tear it down: make demo-down"
