"""A scriptable milter on the real libmilter (Debian's python3-milter, pymilter): run by /usr/bin/python3.

    /usr/bin/python3 -I milter_app.py SOCKET SCRIPT.json EVENTS.jsonl

(-I: this folder holds a milter.py of its own, which must not shadow pymilter's C module.)

SOCKET is libmilter's spec (inet:PORT@127.0.0.1, unix:/path). Every callback appends one JSON line to EVENTS
(the callback's name, its arguments, the macros it could read) before it answers as SCRIPT says:

    {"protocol": ["NR_HDR", "NOHELO", ...],   # the SMFIP_* steps to ask for instead of pymilter's choice
     "symlist": {"envfrom": ["{mail_addr}", ...], ...},   # macro lists per stage (smfi_setsymlist)
     "macros": ["j", "{daemon_name}", ...],   # the macros each callback records (a broad list by default)
     "on": {"envrcpt": [{"match": "bad@", "result": "reject", "reply": ["550", "5.7.1", "line 1", "line 2"]}],
            "eom": {"do": [["addheader", "X-Test", "yes"], ["quarantine", "held"]], "result": "accept"},
            "body": {"result": "skip"}, "envfrom": {"result": "hang"}}}

A rule's "match" is a substring of the callback's first argument; "result" is continue (the default), accept,
reject, tempfail, discard, skip or hang (wait until killed); "progress" sends that many SMFIR_PROGRESS first.
"""

import json
import sys
import threading

import Milter

SCRIPT = json.loads(open(sys.argv[2], encoding="utf-8").read())
EVENTS = sys.argv[3]
LOCK = threading.Lock()
DEFAULT_MACROS = ["j", "_", "{daemon_name}", "{daemon_addr}", "v", "{client_addr}", "{client_port}",
                  "{client_name}", "{tls_version}", "{cipher}", "{cipher_bits}", "{auth_type}", "{auth_authen}",
                  "{mail_addr}", "{rcpt_addr}", "i"]
RESULTS = {"continue": Milter.CONTINUE, "accept": Milter.ACCEPT, "reject": Milter.REJECT,
           "tempfail": Milter.TEMPFAIL, "discard": Milter.DISCARD, "skip": Milter.SKIP}
NO_REPLY = {"connect": Milter.P_NR_CONN, "hello": Milter.P_NR_HELO, "envfrom": Milter.P_NR_MAIL,
            "envrcpt": Milter.P_NR_RCPT, "data": Milter.P_NR_DATA, "header": Milter.P_NR_HDR,
            "eoh": Milter.P_NR_EOH, "body": Milter.P_NR_BODY}
STAGES = {"connect": Milter.M_CONNECT, "helo": Milter.M_HELO, "envfrom": Milter.M_ENVFROM,
          "envrcpt": Milter.M_ENVRCPT, "data": Milter.M_DATA, "eoh": Milter.M_EOH, "eom": Milter.M_EOM}


def record(event, args, macros):
    line = json.dumps({"event": event, "args": args, "macros": macros})
    with LOCK, open(EVENTS, "a", encoding="utf-8") as out:
        out.write(line + "\n")


class ScriptedMilter(Milter.Base):
    def negotiate(self, opts):
        offered_actions, offered_protocol = opts[0], opts[1]
        if "protocol" not in SCRIPT:
            result = super().negotiate(opts)
        else:
            self._actions = opts[0]
            wanted = 0
            for name in SCRIPT["protocol"]:
                wanted |= getattr(Milter, "P_" + name)
            opts[1] = self._protocol = wanted & opts[1]
            opts[2] = opts[3] = 0
            result = Milter.CONTINUE
        for stage, names in SCRIPT.get("symlist", {}).items():
            # Base.setsymlist hands the C module bytes where it wants str (pymilter 1.0.5): call it directly.
            self._ctx.setsymlist(STAGES[stage], " ".join(names))
        record("negotiate", [offered_actions, offered_protocol, self._protocol], {})
        return result

    def _answer(self, event, *args):
        macros = {}
        for name in SCRIPT.get("macros", DEFAULT_MACROS):
            value = self.getsymval(name)
            if value is not None:
                macros[name] = value
        record(event, [a.decode("utf-8", "surrogateescape") if isinstance(a, bytes) else a for a in args], macros)
        rules = SCRIPT.get("on", {}).get(event, {})
        for rule in rules if isinstance(rules, list) else [rules]:
            if "match" in rule and not (args and rule["match"] in str(args[0])):
                continue
            for _ in range(rule.get("progress", 0)):
                self.progress()
            for action in rule.get("do", []):
                getattr(self, "_" + action[0])(*action[1:])
            if "reply" in rule:
                self.setreply(*rule["reply"])
            result = rule.get("result", "continue")
            if result == "hang":
                threading.Event().wait()
            if result == "continue" and self._protocol & NO_REPLY.get(event, 0):
                return Milter.NOREPLY
            return RESULTS[result]
        if self._protocol & NO_REPLY.get(event, 0):
            return Milter.NOREPLY
        return Milter.CONTINUE

    # Modifications at the end of the message.
    def _addheader(self, name, value):
        self.addheader(name, value)

    def _insheader(self, index, name, value):
        self.addheader(name, value, index)

    def _chgheader(self, name, index, value):
        self.chgheader(name, index, value)

    def _replacebody(self, text):
        self.replacebody(text.encode("utf-8"))

    def _chgfrom(self, sender, params=None):
        self.chgfrom(sender, params)

    def _addrcpt(self, rcpt, params=None):
        self.addrcpt(rcpt, params)

    def _delrcpt(self, rcpt):
        self.delrcpt(rcpt)

    def _quarantine(self, reason):
        self.quarantine(reason)

    # The callbacks.
    def connect(self, hostname, family, hostaddr):
        address = list(hostaddr) if isinstance(hostaddr, tuple) else hostaddr
        return self._answer("connect", hostname, str(family), address)

    def hello(self, hostname):
        return self._answer("hello", hostname)

    def envfrom(self, sender, *params):
        return self._answer("envfrom", sender, *params)

    def envrcpt(self, recipient, *params):
        return self._answer("envrcpt", recipient, *params)

    def data(self):
        return self._answer("data")

    @Milter.decode("bytes")
    def header(self, name, value):
        return self._answer("header", name, value)

    def eoh(self):
        return self._answer("eoh")

    def body(self, chunk):
        return self._answer("body", chunk)

    def eom(self):
        return self._answer("eom")

    def abort(self):
        record("abort", [], {})
        return Milter.CONTINUE

    def close(self):
        record("close", [], {})
        return Milter.CONTINUE


if __name__ == "__main__":
    Milter.factory = ScriptedMilter
    Milter.runmilter("scripted", sys.argv[1], timeout=60)
