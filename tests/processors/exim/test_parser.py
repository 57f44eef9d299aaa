"""Table-driven tests of the Exim line parser: one example per line shape, SOURCES.md quirk and §2.5 kind.

Expected values are written by hand from the log grammar (Exim spec "Log files", deliver.c, smtp_in.c).
"""

from __future__ import annotations

import calendar
import time
from datetime import timedelta, timezone
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from processors.exim.parser import MAX_FIELD, parse_line, parse_lines
from processors.exim.types import LineKind

K = LineKind
T0 = float(calendar.timegm((2025, 3, 14, 10, 22, 31, 0, 0, 0)))

CASES: list[tuple[str, str, dict[str, Any]]] = [
    # ---- prefix shapes
    (
        "q1 pid after the timestamp",
        "2010-09-13 05:00:14 [1534] 1Ov4tU-0000Nz-Rm => user@example.com R=local_user T=mail_spool",
        {
            "kind": K.DELIVERY,
            "pid": 1534,
            "msgid": "1Ov4tU-0000Nz-Rm",
            "address": "user@example.com",
            "router": "local_user",
            "transport": "mail_spool",
            "time": float(calendar.timegm((2010, 9, 13, 5, 0, 14, 0, 0, 0))),
        },
    ),
    (
        "q2 syslog prefix, fractional seconds, 23-char id",
        "Feb 14 18:12:33 host exim[46483]: 2025-02-14 18:12:33.470 [46483] 1tixMn-00000000C5j-1wRa "
        "<= root@domain.ru U=root Ci=46483 P=local S=362 M8S=0 RT=0.004s id*=E1tixMn@domain.ru",
        {
            "kind": K.ARRIVAL,
            "pid": 46483,
            "msgid": "1tixMn-00000000C5j-1wRa",
            "time": float(calendar.timegm((2025, 2, 14, 18, 12, 33, 0, 0, 0))) + 0.47,
            "address": "root@domain.ru",
            "user": "root",
            "protocol": "local",
            "size": 362,
            "message_id_header": "E1tixMn@domain.ru",
            "extra": {"Ci": "46483", "M8S": "0", "RT": "0.004s", "id_created": "1"},
        },
    ),
    (
        "q3 time zone offset, retry-time deferral",
        "2021-05-04 13:37:00 +0100 1h43YE-0005F1-ND == mail@host.tld R=dnslookup T=remote_smtp "
        "defer (-53): retry time not reached for any host for 'host.tld'",
        {
            "kind": K.DEFERRAL,
            "time": float(calendar.timegm((2021, 5, 4, 12, 37, 0, 0, 0, 0))),
            "msgid": "1h43YE-0005F1-ND",
            "address": "mail@host.tld",
            "router": "dnslookup",
            "transport": "remote_smtp",
            "errno": -53,
            "error": "retry time not reached for any host for 'host.tld'",
        },
    ),
    (
        "q4 journal line without its own Exim timestamp",
        "2024-03-24T02:04:32.613+00:00 info exim[8001]: [8001] no MAIL in SMTP connection from (User) "
        "[192.0.2.29]:20042 I=[192.0.2.1]:25 Ci=8001 D=0.349s C=EHLO,AUTH,QUIT",
        {
            "kind": K.CONNECTION,
            "time": float(calendar.timegm((2024, 3, 24, 2, 4, 32, 0, 0, 0))) + 0.613,
            "pid": 8001,
            "helo": "User",
            "host": None,
            "host_ip": "192.0.2.29",
            "host_port": 20042,
            "interface_ip": "192.0.2.1",
            "detail": "no MAIL",
            "extra": {"D": "0.349s", "C": "EHLO,AUTH,QUIT", "Ci": "8001"},
        },
    ),
    (
        "q4b hostname exim[pid]: then the Exim timestamp",
        "mail.example.com exim[3751842]: 2021-07-17 23:20:49 plain_server authenticator failed for "
        "([192.0.2.17]) [192.0.2.27]: 535 Incorrect authentication data",
        {
            "kind": K.PROTOCOL,
            "pid": 3751842,
            "time": float(calendar.timegm((2021, 7, 17, 23, 20, 49, 0, 0, 0))),
            "helo": "[192.0.2.17]",
            "host_ip": "192.0.2.27",
            "smtp_code": 535,
            "smtp_phase": "auth",
            "error": "535 Incorrect authentication data",
            "extra": {"authenticator": "plain_server"},
        },
    ),
    (
        "q5 syslog split: first part is parsed, marked",
        "Feb 14 18:12:33 host exim[46483]: [1\\2] 2025-02-14 18:12:33 1tixMn-00000000C5j-1wRa "
        "<= a@b.example H=[192.0.2.1] P=smtp S=10",
        {"kind": K.ARRIVAL, "address": "a@b.example", "host_ip": "192.0.2.1", "extra": {"part": "1/2"}},
    ),
    (
        "q5b syslog split: later parts are continuations",
        "Feb 14 18:12:33 host exim[46483]: [2/2] for x@y.example z@y.example",
        {"kind": K.CONTINUATION, "pid": 46483, "detail": "for x@y.example z@y.example", "extra": {"part": "2/2"}},
    ),
    (
        "q6 16-char message id (test-suite placeholder)",
        "1999-03-02 09:44:33 10HmaX-0005vi-00 Completed",
        {"kind": K.COMPLETED, "msgid": "10HmaX-0005vi-00"},
    ),
    (
        "q10 continuation line without a timestamp",
        ": No space left on device",
        {"kind": K.CONTINUATION, "time": None, "detail": ": No space left on device"},
    ),
    # ---- A. reception
    (
        "A1 local submission with subject and recipients",
        "2025-03-14 10:22:31 1tsxAB-0000000Gk2-3XyZ <= shop@example.com U=shopuser P=local S=2345 "
        'T="Order #1042 confirmation" for bob@gmail.com',
        {
            "kind": K.ARRIVAL,
            "time": T0,
            "msgid": "1tsxAB-0000000Gk2-3XyZ",
            "address": "shop@example.com",
            "user": "shopuser",
            "protocol": "local",
            "size": 2345,
            "subject": "Order #1042 confirmation",
            "recipients": ["bob@gmail.com"],
        },
    ),
    (
        "A2 authenticated SMTP, TLS, two recipients",
        "2025-03-14 10:22:40 1sDcIh-000000004YY-3wAT <= alice@example.com H=(laptop) [203.0.113.7]:51234 "
        "P=esmtpsa X=TLS1.3:TLS_AES_256_GCM_SHA384:256 CV=no A=dovecot_login:alice@example.com S=18234 "
        'id=CAB123@mail.example.com T="Quarterly report" for carol@yahoo.com dave@outlook.com',
        {
            "kind": K.ARRIVAL,
            "helo": "laptop",
            "host": None,
            "host_ip": "203.0.113.7",
            "host_port": 51234,
            "protocol": "esmtpsa",
            "tls": "TLS1.3:TLS_AES_256_GCM_SHA384:256",
            "auth": "dovecot_login:alice@example.com",
            "size": 18234,
            "message_id_header": "CAB123@mail.example.com",
            "subject": "Quarterly report",
            "recipients": ["carol@yahoo.com", "dave@outlook.com"],
            "extra": {"CV": "no"},
        },
    ),
    (
        "A4/q12 bounce: null sender and R=parent",
        "2014-08-31 08:43:16 1XO5PY-0006SO-GS <= <> R=1XO5PX-0006SC-Qa U=mailnull P=local S=1951 "
        'T="Mail delivery failed: returning message to sender" for aaron@domain.com',
        {
            "kind": K.ARRIVAL,
            "address": "",
            "bounce_parent": "1XO5PX-0006SC-Qa",
            "user": "mailnull",
            "subject": "Mail delivery failed: returning message to sender",
            "recipients": ["aaron@domain.com"],
        },
    ),
    (
        "A5 fakereject",
        "1999-03-02 09:44:33 10HmaX-0005vi-00 (= b2@dump.ex H=localhost (myhost.test.ex) [127.0.0.1] "
        "P=esmtp S=1234 for rmt_fakereject@test.ex",
        {
            "kind": K.FAKEREJECT,
            "address": "b2@dump.ex",
            "host": "localhost",
            "helo": "myhost.test.ex",
            "host_ip": "127.0.0.1",
            "recipients": ["rmt_fakereject@test.ex"],
        },
    ),
    (
        "A6 cwd/arguments line",
        "2025-03-14 10:22:31 cwd=/home/shopuser/public_html 3 args: /usr/sbin/sendmail -t -i",
        {
            "kind": K.ARGUMENTS,
            "msgid": None,
            "extra": {"cwd": "/home/shopuser/public_html", "argc": "3", "args": "/usr/sbin/sendmail -t -i"},
        },
    ),
    (
        'q7 escapes in the subject: \\" and octal UTF-8',
        "2014-09-10 13:06:56 1XRlM6-003yMv-KG <= bob@bob.com H=mail.example [10.5.40.204]:46793 P=esmtpsa "
        'S=18635 T="14\\" plates \\316\\261\\\\x" for live@somedomain.com',
        {"kind": K.ARRIVAL, "subject": '14" plates α\\x', "recipients": ["live@somedomain.com"]},
    ),
    (
        "q11 repeated recipients and <trunc>",
        "2025-03-14 10:22:31 1tsxAB-0000000Gk2-3XyZ <= a@example.com U=a P=local S=1 for x@y.example "
        "x@y.example z@y.example <trunc>",
        {
            "kind": K.ARRIVAL,
            "recipients": ["x@y.example", "x@y.example", "z@y.example"],
            "extra": {"recipients_truncated": "1"},
        },
    ),
    (
        "from <original sender> before the recipients",
        "2025-03-14 10:22:31 1tsxAB-0000000Gk2-3XyZ <= srs@example.com H=mx.example [192.0.2.3] P=esmtp "
        "S=5 from <orig@example.org> for r@example.com",
        {"kind": K.ARRIVAL, "recipients": ["r@example.com"], "extra": {"from": "orig@example.org"}},
    ),
    # ---- host shapes (q8, q9)
    (
        "q8 IPv6 with port, host and helo",
        "2014-11-24 11:25:33 1XSdCz-00049U-5A <= a@b.example H=localhost (mail.fictional.example) "
        "[::1]:49956 P=esmtpa S=1",
        {"host": "localhost", "helo": "mail.fictional.example", "host_ip": "::1", "host_port": 49956},
    ),
    (
        "q9 helo that is an empty address literal",
        "2022-06-29 16:04:05 H=([]) [1.2.3.4]:1337 F=<a@b.example> rejected RCPT <c@d.example>: no",
        {"kind": K.REJECTION, "helo": "[]", "host": None, "host_ip": "1.2.3.4", "host_port": 1337},
    ),
    (
        "q9 bare [ip]:port",
        "2013-06-02 06:54:20 [13314] SMTP protocol synchronization error (input sent without waiting for "
        'greeting): rejected connection from H=[211.148.195.192]:25936 I=[1.2.3.4]:25 input="GET / HTTP/1.1"',
        {"kind": K.PROTOCOL, "pid": 13314, "host_ip": "211.148.195.192", "host_port": 25936},
    ),
    (
        "q9 name ([literal]) [ip]:port",
        "2025-01-01 00:00:00 1abcde-000001-AB <= a@b.example H=mail.host.tld ([mail.host.tld]) "
        "[123.123.123.123]:1337 P=esmtp S=9",
        {"host": "mail.host.tld", "helo": "[mail.host.tld]", "host_ip": "123.123.123.123", "host_port": 1337},
    ),
    # ---- B. delivery
    (
        "B1 remote delivery with TLS and confirmation",
        "2025-03-14 10:22:41 1sDcIh-000000004YY-3wAT => carol@yahoo.com R=dkim_lookuphost T=dkim_remote_smtp "
        'H=mta6.am0.yahoodns.net [67.195.204.72] X=TLS1.3:TLS_AES_128_GCM_SHA256:128 CV=yes C="250 ok dirdel"',
        {
            "kind": K.DELIVERY,
            "address": "carol@yahoo.com",
            "parents": [],
            "router": "dkim_lookuphost",
            "transport": "dkim_remote_smtp",
            "host": "mta6.am0.yahoodns.net",
            "host_ip": "67.195.204.72",
            "tls": "TLS1.3:TLS_AES_128_GCM_SHA256:128",
            "confirmation": "250 ok dirdel",
            "extra": {"CV": "yes"},
        },
    ),
    (
        "B2 additional address on a reused connection",
        "2025-03-14 10:22:41 1sDcIh-000000004YY-3wAT -> dave2@yahoo.com R=dkim_lookuphost "
        'T=dkim_remote_smtp H=mta6.am0.yahoodns.net [67.195.204.72]* C="250 ok dirdel"',
        {"kind": K.DELIVERY_MORE, "address": "dave2@yahoo.com", "host_reused": True, "host_port": None},
    ),
    (
        "B3 local mailbox: local part and <top address>",
        "2025-03-14 10:22:41 1sDcIh-000000004YY-3wAT => bob <bob@example.com> R=virtual_user "
        'T=dovecot_virtual_delivery C="250 2.0.0 <bob@example.com> 4T9TCqvRh1h3OAAA6kPjFA Saved"',
        {
            "kind": K.DELIVERY,
            "address": "bob",
            "parents": ["bob@example.com"],
            "confirmation": "250 2.0.0 <bob@example.com> 4T9TCqvRh1h3OAAA6kPjFA Saved",
        },
    ),
    (
        "B5 filtered: /dev/null (parent) <top> T=**bypassed**",
        "2025-03-14 10:22:41 1sDcIh-000000004YY-3wAT => /dev/null (erice@example.com) <techmgr@example.com> "
        "R=virtual_user_filter T=**bypassed**",
        {
            "address": "/dev/null",
            "parents": ["erice@example.com", "techmgr@example.com"],
            "router": "virtual_user_filter",
            "transport": "**bypassed**",
        },
    ),
    (
        "B6 :blackhole:",
        "2025-03-14 10:22:41 1sDcIh-000000004YY-3wAT => :blackhole: <blackhole@example.com> R=virtual_aliases",
        {"address": ":blackhole:", "parents": ["blackhole@example.com"], "router": "virtual_aliases"},
    ),
    (
        "all_parents: several parents in one parenthesis",
        "2025-03-14 10:22:41 1sDcIh-000000004YY-3wAT => c@x.example (b@x.example, a@x.example) <top@x.example> R=r T=t",
        {"address": "c@x.example", "parents": ["b@x.example", "a@x.example", "top@x.example"]},
    ),
    (
        "q13 pipe command with spaces and quotes",
        '1999-03-02 09:44:33 10HmaX-000000005vi-0000 => |/bin/sh -c "cat >/tmp/pipe" <pipe@test.ex> R=alias T=pipe',
        {"address": '|/bin/sh -c "cat >/tmp/pipe"', "parents": ["pipe@test.ex"], "transport": "pipe"},
    ),
    (
        "q13 quoted local part with a space, double space after the flag",
        '2021-05-04 13:37:00 +0100 1gtTXl-009NOy-Ft ->  foo@bar.tld <" foo.bar"@baz.tld> R=dkim_lookuphost '
        "T=dkim_remote_smtp H=mail.host.tld [123.123.123.123] A=fixed_cram K "
        'C="250- 4359466 byte chunk, total 4361651\\n250 OK id=1gtTZ9-0003pq-QN"',
        {
            "kind": K.DELIVERY_MORE,
            "address": "foo@bar.tld",
            "parents": ['" foo.bar"@baz.tld'],
            "auth": "fixed_cram",
            "confirmation": "250- 4359466 byte chunk, total 4361651\n250 OK id=1gtTZ9-0003pq-QN",
            "extra": {"K": "1"},
        },
    ),
    (
        "q7 literal \\n kept in C= (escaped twice by Exim)",
        "1999-03-02 09:44:33 10HmaX-000000005vi-0000 => a@b.example R=r T=t H=h [127.0.0.1] "
        'C="250- 3nn byte chunk, total 3nn\\\\n250 OK id=10HmbC-000000005vi-0000"',
        {"confirmation": "250- 3nn byte chunk, total 3nn\\n250 OK id=10HmbC-000000005vi-0000"},
    ),
    (
        "q13 SRS, F=, P=, QT, DT",
        "2021-05-04 13:37:00 1hEsVV-006q9f-M2 => mail@host.tld <foo@otherhost.tld> "
        "SRS=<SRS0=MQyYEB=SO=otherhost.tld=foo@otherhost.tld> F=<s@x.example> P=<bounce@x.example> "
        "R=tls_lookuphost T=tls_remote_smtp H=mx.tld [192.0.2.9]:25 QT=3s DT=1s",
        {
            "address": "mail@host.tld",
            "parents": ["foo@otherhost.tld"],
            "sender": "s@x.example",
            "host_port": 25,
            "extra": {
                "SRS": "<SRS0=MQyYEB=SO=otherhost.tld=foo@otherhost.tld>",
                "return_path": "bounce@x.example",
                "QT": "3s",
                "DT": "1s",
            },
        },
    ),
    (
        "B7 cutthrough",
        "1999-03-02 09:44:33 10HmaX-0005vi-00 >> userx@domain.com P=<CALLER@myhost.test.ex> R=all T=smtp "
        'H=127.0.0.1 [127.0.0.1] C="250 OK"',
        {"kind": K.CUTTHROUGH, "address": "userx@domain.com", "extra": {"return_path": "CALLER@myhost.test.ex"}},
    ),
    (
        "B8 -N suppressed",
        "1999-03-02 09:44:33 10HmaX-0005vi-00 *> accept <accept@y> R=accept T=appendfile",
        {"kind": K.SUPPRESSED, "address": "accept", "parents": ["accept@y"], "transport": "appendfile"},
    ),
    # ---- C. deferral
    (
        "C1 4xx after MAIL, host after defer (errno)",
        "2025-03-14 10:22:42 1sDcIh-000000004YY-3wAT == carol@yahoo.com R=dkim_lookuphost T=dkim_remote_smtp "
        "defer (-45) H=mta7.am0.yahoodns.net [98.136.96.74]: SMTP error from remote mail server after MAIL "
        "FROM:<alice@example.com> SIZE=18234: 421 4.7.0 [TSS04] Messages from 198.51.100.10 temporarily "
        "deferred",
        {
            "kind": K.DEFERRAL,
            "errno": -45,
            "host": "mta7.am0.yahoodns.net",
            "host_ip": "98.136.96.74",
            "smtp_code": 421,
            "enhanced_code": "4.7.0",
            "smtp_phase": "mail",
            "error": "SMTP error from remote mail server after MAIL FROM:<alice@example.com> SIZE=18234: "
            "421 4.7.0 [TSS04] Messages from 198.51.100.10 temporarily deferred",
        },
    ),
    (
        "C3 multi-line response after end of data",
        "2025-03-14 10:22:42 1sDcIh-000000004YY-3wAT == bob@gmail.com R=dkim_lookuphost T=dkim_remote_smtp "
        "defer (-46) H=gmail-smtp-in.l.google.com [142.250.102.27]: SMTP error from remote mail server after "
        "end of data: 421-4.7.28 [198.51.100.10] Our system has detected an unusual rate.\\n421 4.7.28 gsmtp",
        {"smtp_code": 421, "enhanced_code": "4.7.28", "smtp_phase": "end_of_data", "errno": -46},
    ),
    (
        "C5 OS errno with strerror, then host, then the message",
        "1999-03-02 09:44:33 10HmaX-0005vi-00 == userx@domain1.com R=all T=smtp defer (110): Connection timed "
        "out H=127.0.0.1 [127.0.0.1]: SMTP timeout after EHLO myhost.test.ex",
        {
            "errno": 110,
            "host_ip": "127.0.0.1",
            "error": "SMTP timeout after EHLO myhost.test.ex",
            "smtp_phase": "ehlo",
            "extra": {"strerror": "Connection timed out"},
        },
    ),
    (
        "C4 connection failure: strerror only",
        "2025-03-14 10:22:42 1sDcIh-000000004YY-3wAT == x@example.org R=dkim_lookuphost T=dkim_remote_smtp "
        "defer (111): Connection refused",
        {"errno": 111, "error": "Connection refused", "smtp_phase": "connect", "smtp_code": None},
    ),
    (
        "C8 cPanel send limit, router only",
        "2025-03-14 10:22:42 1sDcIh-000000004YY-3wAT == f@kos.net R=check_mail_permissions defer (-1): Domain "
        "pigdog.org has exceeded the max emails per hour (12/10 (120%)) allowed.  Message will be reattempted "
        "later",
        {
            "router": "check_mail_permissions",
            "transport": None,
            "errno": -1,
            "error": "Domain pigdog.org has exceeded the max emails per hour (12/10 (120%)) allowed.  "
            "Message will be reattempted later",
        },
    ),
    (
        "C9 held domain: no router or transport",
        "1999-03-02 09:44:33 10HmaX-0005vi-00 == CALLER@two.test.ex defer (-23): domain is held",
        {"address": "CALLER@two.test.ex", "errno": -23, "error": "domain is held", "router": None},
    ),
    (
        "routing defer without a router name",
        "1999-03-02 09:44:33 10HmaX-0005vi-00 == rz.b@outside routing defer (-52): retry time not reached",
        {"address": "rz.b@outside", "errno": -52, "error": "retry time not reached", "extra": {"driver": "routing"}},
    ),
    (
        "q18 Exim 3 style deferral",
        "2002-01-01 10:00:00 16aiQz-0002Q5-00 == a@b.example T=smtp defer (145): Connection timed out",
        {"kind": K.DEFERRAL, "transport": "smtp", "errno": 145, "error": "Connection timed out"},
    ),
    (
        "pre-4.80 deferral with 'host NAME [IP]:' inside the message",
        "2014-09-24 12:59:49 1XWqqy-00028x-FK == test@badluckbryan.com R=lookuphost T=remote_smtp defer (-44): "
        "SMTP error from remote mail server after RCPT TO:<test@gylsystems.com>: host gylsystems.com "
        "[69.69.69.69]: 451 Temporary local problem - please try later",
        {"host": "gylsystems.com", "host_ip": "69.69.69.69", "smtp_code": 451, "smtp_phase": "rcpt"},
    ),
    # ---- D. failure
    (
        "D1 pre-4.99 ': ' separator glued to the TLS field",
        "2025-03-14 10:22:42 1sDcIh-000000004YY-3wAT ** nosuch@gmail.com R=dkim_lookuphost T=dkim_remote_smtp "
        "H=gmail-smtp-in.l.google.com [142.250.102.27] X=TLS1.3:TLS_AES_128_GCM_SHA256:128 CV=yes: SMTP error "
        "from remote mail server after RCPT TO:<nosuch@gmail.com>: 550-5.1.1 The email account that you tried "
        "to reach does not exist.\\n550 5.1.1 gsmtp",
        {
            "kind": K.FAILURE,
            "address": "nosuch@gmail.com",
            "tls": "TLS1.3:TLS_AES_128_GCM_SHA256:128",
            "host_ip": "142.250.102.27",
            "smtp_code": 550,
            "enhanced_code": "5.1.1",
            "smtp_phase": "rcpt",
            "extra": {"CV": "yes"},
        },
    ),
    (
        "D2 4.99 ' : ' separator with I=",
        "1999-03-02 09:44:33 10HmaX-0005vi-00 ** userz@domain.com R=all T=smtp H=127.0.0.1 [127.0.0.1]:25 "
        "I=[127.0.0.1]:10001 : SMTP error from remote mail server after RCPT TO:<userz@domain.com>: 550 "
        "Recipient refused",
        {
            "host_port": 25,
            "interface_ip": "127.0.0.1",
            "error": "SMTP error from remote mail server after RCPT TO:<userz@domain.com>: 550 Recipient refused",
            "smtp_code": 550,
            "enhanced_code": None,
            "smtp_phase": "rcpt",
        },
    ),
    (
        "q14 reused connection '*' then ' : '",
        "1999-03-02 09:44:33 10HmaX-0005vi-00 ** d@test.ex R=all T=smtp H=127.0.0.1 [127.0.0.1]* : SMTP error "
        "from remote mail server after RCPT TO:<d@test.ex>: 550 Recipient not OK",
        {
            "host_reused": True,
            "smtp_code": 550,
            "error": "SMTP error from remote mail server after RCPT TO:<d@test.ex>: 550 Recipient not OK",
        },
    ),
    (
        "q15 colon stuck to R=",
        "2020-01-01 00:00:00 1gpXfR-0040X2-94 ** admin@example.net R=virtual_aliases: No such person at this address.",
        {"router": "virtual_aliases", "transport": None, "error": "No such person at this address."},
    ),
    (
        "D6 no router: address then error",
        "1999-03-02 09:44:33 10HmaX-0005vi-00 ** b@known.ex: retry timeout exceeded",
        {"kind": K.FAILURE, "address": "b@known.ex", "error": "retry timeout exceeded"},
    ),
    (
        "D5 routing failure with <top>:",
        "1999-03-02 09:44:33 10HmaX-0005vi-00 ** jim@trek99.example <jim@trek99.example>: unknown mail domain",
        {"address": "jim@trek99.example", "parents": ["jim@trek99.example"], "error": "unknown mail domain"},
    ),
    (
        "D7 all hosts failing",
        "1999-03-02 09:44:33 10HmaX-0005vi-00 ** userx@test.ex R=r1 T=t1 : all hosts for 'test.ex' have been "
        "failing for a long time (and retry time not reached)",
        {
            "router": "r1",
            "transport": "t1",
            "error": "all hosts for 'test.ex' have been failing for a long time (and retry time not reached)",
        },
    ),
    (
        "DT= after the message on ** lines",
        "1999-03-02 09:44:33 10HmaX-0005vi-00 ** a@b.example R=r T=t : 550 no DT=1.2s",
        {"error": "550 no", "smtp_code": 550, "extra": {"DT": "1.2s"}},
    ),
    (
        "D10 error ignored",
        "1999-03-02 09:44:33 10HmaX-0005vi-00 b@known.ex: error ignored",
        {"kind": K.ERROR_IGNORED, "address": "b@known.ex", "msgid": "10HmaX-0005vi-00"},
    ),
    # ---- per-host lines
    (
        "C10 per-host SMTP error",
        "1999-03-02 09:44:33 10HmaX-0005vi-00 H=localhost4.test.ex [127.0.0.1]: SMTP error from remote mail "
        "server after initial connection: 450 I'm busy",
        {
            "kind": K.HOST_ERROR,
            "host": "localhost4.test.ex",
            "host_ip": "127.0.0.1",
            "smtp_code": 450,
            "smtp_phase": "connect",
            "error": "SMTP error from remote mail server after initial connection: 450 I'm busy",
        },
    ),
    (
        "C4 per-host connection failure",
        "2025-03-14 10:22:42 1sDcIh-000000004YY-3wAT H=mx.example.org [192.0.2.5] Connection timed out",
        {"kind": K.HOST_ERROR, "host": "mx.example.org", "error": "Connection timed out", "smtp_phase": "connect"},
    ),
    (
        "pre-4.80 per-host SMTP error",
        "2014-09-29 21:27:08 1XYdJu-002e6P-9F SMTP error from remote mail server after MAIL "
        "FROM:<someone@someaddress.com> SIZE=6601: host mta5.am0.yahoodns.net [66.196.118.240]: 421 4.7.0 "
        "[GL01] Message temporarily deferred",
        {
            "kind": K.HOST_ERROR,
            "host": "mta5.am0.yahoodns.net",
            "host_ip": "66.196.118.240",
            "smtp_code": 421,
            "enhanced_code": "4.7.0",
            "smtp_phase": "mail",
        },
    ),
    # ---- E. SMTP-time rejections
    (
        "E1 rejected RCPT with RBL text",
        "2025-03-14 10:30:02 H=(ylmf-pc) [185.220.1.1]:61234 F=<spam@bad.example> rejected RCPT "
        "<info@example.com>: JunkMail rejected - (ylmf-pc) [185.220.1.1]:61234 is in an RBL",
        {
            "kind": K.REJECTION,
            "msgid": None,
            "helo": "ylmf-pc",
            "host_ip": "185.220.1.1",
            "host_port": 61234,
            "sender": "spam@bad.example",
            "recipients": ["info@example.com"],
            "error": "JunkMail rejected - (ylmf-pc) [185.220.1.1]:61234 is in an RBL",
            "extra": {"where": "RCPT", "temporary": "0"},
        },
    ),
    (
        "E2 temporarily rejected RCPT with A= and IPv6",
        "2014-11-24 11:25:33 H=localhost (srv-hs1.netsons.net) [::1]:49956 F=<aaron@domain.com> "
        "A=dovecot_login:aaron@domain.com temporarily rejected RCPT <test@pleasecheck.net>: Could not complete "
        "sender verify",
        {
            "kind": K.REJECTION,
            "auth": "dovecot_login:aaron@domain.com",
            "recipients": ["test@pleasecheck.net"],
            "error": "Could not complete sender verify",
            "extra": {"where": "RCPT", "temporary": "1"},
        },
    ),
    (
        "E3 rejected after DATA with a message id",
        "2013-06-15 11:20:36 [2516] 1Unmew-0000ea-SE H=egeftech.static.otenet.gr [83.235.177.148]:32706 "
        "I=[1.2.3.4]:25 F=auguriesvbd40@google.com rejected after DATA: This message contains a virus",
        {
            "kind": K.REJECTION,
            "msgid": "1Unmew-0000ea-SE",
            "sender": "auguriesvbd40@google.com",
            "error": "This message contains a virus",
            "extra": {"where": "DATA", "temporary": "0", "interface_port": "25"},
        },
    ),
    (
        "E4 rejected MAIL",
        "1999-03-02 09:44:33 H=[10.9.8.8] rejected MAIL <bad@test1>",
        {"kind": K.REJECTION, "sender": "bad@test1", "error": None, "extra": {"where": "MAIL"}},
    ),
    (
        "E4 rejected EHLO or HELO",
        "1999-03-02 09:44:33 H=(x.y.z) [10.9.8.10] rejected EHLO or HELO x.y.z: bad name",
        {"kind": K.REJECTION, "error": "bad name", "extra": {"where": "EHLO", "argument": "x.y.z"}},
    ),
    (
        "E4 temporarily rejected connection in the connect ACL",
        '2022-06-29 14:33:43 H=test.sa.com [1.2.3.4]:18146 temporarily rejected connection in "connect" ACL: '
        '"Host is ratelimited (1.9/1h max:1.2)"',
        {
            "kind": K.REJECTION,
            "error": '"Host is ratelimited (1.9/1h max:1.2)"',
            "extra": {"where": "CONNECT", "temporary": "1"},
        },
    ),
    (
        "E5 sender verify fail",
        "2013-06-10 10:10:59 H=ufficioestampa.it (srv.ufficioestampa.it) [193.169.56.211] sender verify fail "
        "for <user@example.com>: Unrouteable address",
        {
            "kind": K.REJECTION,
            "sender": "user@example.com",
            "error": "Unrouteable address",
            "extra": {"where": "SENDER_VERIFY", "temporary": "0"},
        },
    ),
    (
        "E6 size reject without H=",
        "1999-03-02 09:44:33 rejected MAIL FROM:<userx@test.ex> U=CALLER: message too big: size=1000000000 max=100",
        {
            "kind": K.REJECTION,
            "sender": "userx@test.ex",
            "user": "CALLER",
            "error": "message too big: size=1000000000 max=100",
            "extra": {"where": "MAIL"},
        },
    ),
    (
        "E7 non-SMTP ACL",
        "1999-03-02 09:44:33 10HmaX-0005vi-00 U=CALLER F=<ted@29.29.0.com> rejected by non-SMTP ACL: cannot "
        "test hosts condition in non-SMTP ACL",
        {
            "kind": K.REJECTION,
            "user": "CALLER",
            "sender": "ted@29.29.0.com",
            "error": "cannot test hosts condition in non-SMTP ACL",
            "extra": {"where": "NON_SMTP"},
        },
    ),
    (
        "old-style RCPT argument without brackets",
        "2013-06-10 18:33:32 [10099] H=(yakult.com.tw) [202.132.70.178]:3755 I=[1.2.3.4]:25 "
        "F=menacedsj04@listserv.eurasia.org rejected RCPT dir@ml3.ru: relay not permitted",
        {"kind": K.REJECTION, "recipients": ["dir@ml3.ru"], "error": "relay not permitted"},
    ),
    # ---- cPanel lines
    (
        "E8 SpamAssassin NOT spam",
        '2025-03-14 10:22:40 1sDcIh-000000004YY-3wAT H=mx.example [203.0.113.9]:4779 Warning: "SpamAssassin '
        'as cpaneleximscanner detected message as NOT spam (0.3)"',
        {"kind": K.SPAM_SCORE, "spam_score": 0.3, "is_spam": False, "host_ip": "203.0.113.9"},
    ),
    (
        "SpamAssassin spam, negative score variant on outgoing",
        "2014-09-10 13:06:56 1XRlM6-003yMv-KG H=mail.fictional.example[10.5.40.204]:46793 Warning: "
        '"SpamAssassin as cpaneleximscanner detected OUTGOING smtp message as spam (-0.1)"',
        {
            "kind": K.SPAM_SCORE,
            "spam_score": -0.1,
            "is_spam": True,
            "host": "mail.fictional.example",
            "host_ip": "10.5.40.204",
            "extra": {"direction": "outgoing"},
        },
    ),
    (
        "Sender identification",
        "2025-03-14 10:22:31 1tsxAB-0000000Gk2-3XyZ Sender identification U=shopuser D=example.com S=shopuser",
        {"kind": K.SENDER_IDENT, "user": "shopuser", "cpanel_domain": "example.com", "sender": "shopuser"},
    ),
    (
        "SMTP connection identification",
        "2025-03-14 10:22:40 SMTP connection identification H=(laptop) [203.0.113.7]:51234 A=203.0.113.7 "
        "P=51234 M=1sDcIh-000000004YY-3wAT U=alice ID=1001 S=alice@example.com B=authenticated_local_user",
        {
            "kind": K.CONNECTION_IDENT,
            "helo": "laptop",
            "host_ip": "203.0.113.7",
            "user": "alice",
            "sender": "alice@example.com",
            "msgid": "1sDcIh-000000004YY-3wAT",
            "auth": None,
            "extra": {"ID": "1001", "B": "authenticated_local_user"},
        },
    ),
    (
        "SMTP connection outbound",
        "2014-09-10 13:06:56 1XRlM6-003yMv-KG SMTP connection outbound 1410368816 1XRlM6-003yMv-KG domain.com "
        "live@somedomain.com",
        {
            "kind": K.CONNECTION_OUTBOUND,
            "cpanel_domain": "domain.com",
            "recipients": ["live@somedomain.com"],
            "extra": {"timestamp": "1410368816"},
        },
    ),
    # ---- F. connection / protocol
    (
        "F1 connection open",
        "2025-03-14 10:22:40 SMTP connection from [203.0.113.7]:51234 (TCP/IP connection count = 3)",
        {"kind": K.CONNECTION, "host_ip": "203.0.113.7", "host_port": 51234, "detail": "(TCP/IP connection count = 3)"},
    ),
    (
        "F1 connection closed, 4.97 Ci= before from",
        "2024-03-24T02:04:32.413+00:00 info exim[8001]: [8001] SMTP connection Ci=8001 from (User) "
        "[194.33.191.29]:20042 I=[65.109.230.99]:25 D=0.149s closed by QUIT",
        {
            "kind": K.CONNECTION,
            "helo": "User",
            "host_ip": "194.33.191.29",
            "detail": "closed by QUIT",
            "extra": {"Ci": "8001", "D": "0.149s"},
        },
    ),
    (
        "F4 protocol synchronization error",
        "2013-06-02 09:05:48 [18505] SMTP protocol synchronization error (next input sent too soon: "
        'pipelining was not advertised): rejected "RSET" H=ba77.mx83.fr [82.96.160.77]:58302 I=[1.2.3.4]:25 '
        'next input="QUIT\\r\\n"',
        {"kind": K.PROTOCOL, "host": "ba77.mx83.fr", "host_ip": "82.96.160.77"},
    ),
    (
        "F8 TLS error",
        "1999-03-02 09:44:33 TLS error on connection from (close.rhu.barb) [127.0.0.1] (tls lib accept fn): "
        "TCP connection closed by peer",
        {"kind": K.PROTOCOL, "helo": "close.rhu.barb", "host_ip": "127.0.0.1", "smtp_phase": "starttls"},
    ),
    (
        "F9 DKIM verification",
        "1999-03-02 09:44:33 10HmaX-0005vi-00 DKIM: d=test.ex s=sel c=simple/simple a=rsa-sha1 b=1024 "
        "[verification succeeded]",
        {"kind": K.MESSAGE_INFO, "extra": {"dkim_domain": "test.ex"}},
    ),
    # ---- G. lifecycle
    (
        "G1 Completed",
        "1999-03-02 09:44:33 10HmaX-0005vi-00 Completed QT=3m12s",
        {"kind": K.COMPLETED, "extra": {"QT": "3m12s"}},
    ),
    (
        "G2 Frozen",
        "1999-03-02 09:44:33 10HmaX-0005vi-00 Frozen (delivery error message)",
        {"kind": K.FROZEN, "detail": "delivery error message"},
    ),
    (
        "G2 Unfrozen",
        "1999-03-02 09:44:33 10HmaX-0005vi-00 Unfrozen by auto-thaw",
        {"kind": K.UNFROZEN, "detail": "auto-thaw"},
    ),
    (
        "G3 Message is frozen",
        "2020-03-04 20:04:25 1j9ZoZ-0002Jk-9W Message is frozen",
        {"kind": K.MESSAGE_INFO, "detail": "Message is frozen"},
    ),
    (
        "G3 spool file locked",
        "2020-03-04 20:04:25 1j9ZoZ-0002Jk-9W Spool file is locked (another process is handling this message)",
        {"kind": K.MESSAGE_INFO},
    ),
    (
        "G4 cancelled",
        "1999-03-02 09:44:33 10HmaX-0005vi-00 cancelled by timeout_frozen_after",
        {"kind": K.CANCELLED, "detail": "cancelled by timeout_frozen_after"},
    ),
    (
        "G5 queue run",
        "2020-02-29 00:04:25 Start queue run: pid=31912",
        {"kind": K.QUEUE_RUN, "detail": "start", "extra": {"queue_runner_pid": "31912"}},
    ),
    (
        "daemon start",
        "1999-03-02 09:44:33 exim x.yz daemon started: pid=p1234, no queue runs, listening for SMTP on port 1225",
        {"kind": K.DAEMON},
    ),
    (
        "free text (ACL logwrite) keeps its message id",
        "1999-03-02 09:44:33 10HmaX-0005vi-00 rcpt_acl: macro: From:Sender",
        {"kind": K.NOTE, "msgid": "10HmaX-0005vi-00", "detail": "rcpt_acl: macro: From:Sender"},
    ),
    # ---- damage (q17, q18)
    (
        "q18 forum damage: flag glued to the address",
        "2014-09-13 11:37:53 1XSdCz-00049U-5A ==aaron@domain.com R=lookuphost T=remote_smtp defer (-44): SMTP "
        "error from remote mail server after RCPT TO:<aaron@domain.com>: host mail.fictional.example "
        "[10.5.40.204]: 452 <aron@domain.com> Domain size limit exceeded",
        {"kind": K.DEFERRAL, "address": "aaron@domain.com", "errno": -44, "smtp_code": 452, "host_ip": "10.5.40.204"},
    ),
]


@pytest.mark.parametrize(("line", "expected"), [(c[1], c[2]) for c in CASES], ids=[c[0] for c in CASES])
def test_line_shapes(line: str, expected: dict[str, Any]) -> None:
    for raw in (line, line.encode()):
        parsed = parse_line(raw)
        for name, value in expected.items():
            if name == "extra":
                for key, item in value.items():
                    assert parsed.extra.get(key) == item, (key, parsed.extra)
            elif name == "time":
                assert parsed.time == (pytest.approx(value) if value is not None else None)
            else:
                assert getattr(parsed, name) == value, (name, parsed)
        assert parsed.raw == line


def test_default_timezone_applies_only_without_an_offset() -> None:
    berlin = ZoneInfo("Europe/Berlin")
    local = parse_line("2025-07-01 12:00:00 10HmaX-0005vi-00 Completed", default_tz=berlin)
    assert local.time == calendar.timegm((2025, 7, 1, 10, 0, 0, 0, 0, 0))  # CEST = UTC+2
    winter = parse_line("2025-01-01 12:00:00 10HmaX-0005vi-00 Completed", default_tz=berlin)
    assert winter.time == calendar.timegm((2025, 1, 1, 11, 0, 0, 0, 0, 0))
    explicit = parse_line("2025-07-01 12:00:00 -0500 10HmaX-0005vi-00 Completed", default_tz=berlin)
    assert explicit.time == calendar.timegm((2025, 7, 1, 17, 0, 0, 0, 0, 0))
    fixed = parse_line("2025-07-01 12:00:00 10HmaX-0005vi-00 Completed", default_tz=timezone(timedelta(hours=3)))
    assert fixed.time == calendar.timegm((2025, 7, 1, 9, 0, 0, 0, 0, 0))


def test_syslog_time_without_year_is_not_in_the_future() -> None:
    parsed = parse_line("Jun 29 16:04:19 server exim[1234]: H=[1.2.3.4] rejected MAIL <a@b.example>")
    assert parsed.kind is K.REJECTION
    assert parsed.pid == 1234
    assert parsed.time is not None and parsed.time <= time.time() + 2 * 86400
    assert time.gmtime(parsed.time)[1:6] == (6, 29, 16, 4, 19)


def test_invalid_date_is_kept_as_text_without_a_time() -> None:
    parsed = parse_line("2025-13-45 99:00:00 10HmaX-0005vi-00 Completed")
    assert parsed.time is None
    assert parsed.kind is K.COMPLETED
    assert parsed.extra["bad_time"] == "2025-13-45 99:00:00"


def test_invalid_utf8_and_control_bytes_are_replaced_not_fatal() -> None:
    raw = b'2025-03-14 10:22:31 1tsxAB-0000000Gk2-3XyZ <= a\xff\xfe@example.com U=x\x00y P=local S=1 T="\x1b[31m"'
    parsed = parse_line(raw)
    assert parsed.kind is K.ARRIVAL
    assert parsed.address == "a\ufffd\ufffd@example.com"
    assert parsed.user == "x\x00y"
    assert parsed.subject == "\x1b[31m"


def test_crlf_and_lf_are_stripped() -> None:
    assert parse_line(b"1999-03-02 09:44:33 10HmaX-0005vi-00 Completed\r\n").raw.endswith("Completed")
    assert parse_line("1999-03-02 09:44:33 10HmaX-0005vi-00 Completed\n").kind is K.COMPLETED


def test_huge_line_is_bounded_and_parsed() -> None:
    line = '2025-03-14 10:22:31 1tsxAB-0000000Gk2-3XyZ <= a@b.example U=x P=local S=1 T="' + "A" * 1_000_000
    parsed = parse_line(line.encode())
    assert parsed.kind is K.ARRIVAL
    assert parsed.subject is not None and len(parsed.subject) <= MAX_FIELD
    assert len(parsed.raw) <= 16384
    assert parsed.extra["truncated_from"] == str(len(line))


def test_binary_noise_without_a_timestamp_is_unknown() -> None:
    parsed = parse_line(bytes(range(256)) * 4)
    assert parsed.kind is K.UNKNOWN
    assert parsed.detail


def test_empty_line_is_not_a_continuation() -> None:
    assert parse_line(b"").kind is K.UNKNOWN


def test_parse_lines_gives_continuations_the_previous_context() -> None:
    lines = [
        b"2025-03-14 10:22:31 1tsxAB-0000000Gk2-3XyZ failed to write journal for a@b.example",
        b": No space left on device",
    ]
    first, second = parse_lines(lines)
    assert first.msgid == "1tsxAB-0000000Gk2-3XyZ"
    assert second.kind is K.CONTINUATION
    assert second.msgid == first.msgid
    assert second.time == first.time
