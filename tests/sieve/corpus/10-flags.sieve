require ["imap4flags", "fileinto", "variables"];
setflag "seen" "\\Seen";
addflag "$Important";
if header :contains "from" "alice" { addflag ["\\Flagged", "$Alice"]; }
if hasflag :contains "$alice" { fileinto :flags "${seen}" "Alice"; }
removeflag "$Important";
