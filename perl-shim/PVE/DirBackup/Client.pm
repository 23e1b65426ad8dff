package PVE::DirBackup::Client;

# JSON-RPC 2.0 client for dirbackupd: one newline-delimited JSON message per line over a Unix
# socket. The storage plugin and the backup provider forward every call through call(); this
# module also holds the untaint helpers, because everything read from the socket is untrusted
# and vzdump, qmrestore and pct run under perl -T.

use strict;
use warnings;

use Errno qw(EINTR EAGAIN EWOULDBLOCK EINPROGRESS EPIPE ECONNRESET);
use IO::Select;
use IO::Socket::UNIX;
use JSON;
use MIME::Base64 qw(encode_base64 decode_base64);
use Socket qw(SOCK_STREAM MSG_NOSIGNAL pack_sockaddr_un);
use Time::HiRes ();

use base qw(Exporter);

our @EXPORT_OK = qw(
    untaint_volname untaint_int untaint_path untaint_word
    encode_bytes decode_bytes json_bool plain_data param_int
);

our $PROTOCOL = '1.0';
our $CLIENT_NAME = 'pve-dirbackup-shim/0.1';
our $DEFAULT_SOCKET = '/run/dirbackupd/dirbackupd.sock';

# Replies may carry a whole listing; anything longer is a broken or hostile peer, not data.
our $MAX_REPLY_LINE = 256 * 1024 * 1024;

our $NOT_RUNNING = "dirbackupd is not running (systemctl status dirbackupd)\n";

# Per-method deadline in seconds, mirrored from protocol/catalog.json (tests/perl/unit/catalog.t
# keeps them equal). undef = no deadline: backups and restores run for hours.
our %TIMEOUT = (
    hello => 5,

    check_connection => 5,
    activate_storage => 15,
    deactivate_storage => 15,
    status => 1,
    parse_volname => 10,
    path => 10,
    filesystem_path => 10,
    list_images => 30,
    list_volumes => 60,
    volume_size_info => 30,
    get_volume_attribute => 10,
    update_volume_attribute => 30,
    free_image => undef,
    prune_backups => undef,
    activate_volume => 10,
    deactivate_volume => 10,
    map_volume => 10,
    unmap_volume => 10,
    alloc_image => 10,
    clone_image => 10,
    create_base => 10,
    volume_resize => 10,
    volume_snapshot => 10,
    volume_snapshot_rollback => 10,
    volume_snapshot_delete => 10,
    rename_volume => 10,
    rename_snapshot => 10,
    volume_export => 10,
    volume_import => 10,
    volume_export_formats => 10,
    volume_import_formats => 10,
    volume_has_feature => 10,
    on_add_hook => 15,
    on_update_hook => 15,
    on_update_hook_full => 15,
    on_delete_hook => 15,

    job_init => undef,
    job_cleanup => undef,
    backup_init => undef,
    backup_cleanup => undef,
    backup_get_mechanism => undef,
    backup_handle_log_file => undef,
    backup_vm_query_incremental => undef,
    backup_vm => undef,
    backup_container_prepare => undef,
    backup_container => undef,
    restore_get_mechanism => undef,
    archive_get_guest_config => undef,
    archive_get_firewall_config => undef,
    restore_vm_init => undef,
    restore_vm_cleanup => undef,
    restore_vm_volume_init => undef,
    restore_vm_volume_cleanup => undef,
    restore_container_init => undef,
    restore_container_cleanup => undef,
);

my $json = JSON->new->utf8->allow_nonref;

# The one connection of this process: { fh, path, pid, buf, next_id, inherited }. PVE forks a lot
# (API handler to task worker, vzdump to the container's userns child), so the pid that opened it
# is recorded.
my $conn;

# ---- public API ------------------------------------------------------------------------------

# call($method, \%params, %opts) -> result
#   log => sub ($level, $message): receives 'log' notifications while the call is in flight
#   inherit => 1: use a connection a parent process opened instead of opening a new one. Only for
#                 backup_container: its child runs as mapped root in a user namespace and could not
#                 pass the daemon's root-only peer check with a connection of its own.
sub call {
    my ($method, $params, %opts) = @_;

    die "dirbackupd method '$method' has no deadline entry\n" if !exists $TIMEOUT{$method};
    my $timeout = $TIMEOUT{$method};
    my $deadline = defined($timeout) ? Time::HiRes::time() + $timeout : undef;

    my $c = _connection($deadline, $method, $timeout, $opts{inherit});
    return _request($c, $method, $params, $deadline, $timeout, $opts{log});
}

# Forget the cached connection (tests, and anyone who wants a fresh one).
sub disconnect {
    _drop();
    return;
}

sub socket_path {
    my $path = $ENV{DIRBACKUP_SOCKET};
    return $DEFAULT_SOCKET if !defined($path) || $path eq '';
    # The environment is tainted and names what we connect to: accept only a plain absolute path.
    if ($path =~ m!^(/[A-Za-z0-9._\-/]{1,106})\z! && $path !~ m!(?:^|/)\.\.(?:/|$)!) {
        return $1;
    }
    die "DIRBACKUP_SOCKET is not a plain absolute path\n";
}

# ---- untaint helpers ---------------------------------------------------------------------
# Each returns the value untainted, undef for undef, or dies naming the field. The patterns are
# per field, so a value of one kind can never pass as another (a volname never becomes a path).

sub untaint_volname {
    my ($value, $what) = @_;
    return undef if !defined($value);
    if ($value =~ m!^([a-zA-Z0-9\-.+=_/:]+)\z!) {
        my $name = $1;
        # volume names end up in paths on the PVE side too: no way up the tree
        return $name if !grep { $_ eq '..' } split(m!/!, $name);
    }
    _invalid($what // 'volume name', $value);
}

sub untaint_int {
    my ($value, $what) = @_;
    return undef if !defined($value);
    return int($1) if "$value" =~ m/^(-?\d+)\z/;
    _invalid($what // 'integer', $value);
}

sub untaint_path {
    my ($value, $what) = @_;
    return undef if !defined($value);
    if ($value =~ m!^(/[^\0\n]*)\z!) {
        my $path = $1;
        return $path if !grep { $_ eq '..' } split(m!/!, $path);
    }
    _invalid($what // 'path', $value);
}

# formats, vtypes, mechanisms, content types, marks
sub untaint_word {
    my ($value, $what) = @_;
    return undef if !defined($value);
    return $1 if $value =~ m/^([a-z0-9\-]+)\z/;
    _invalid($what // 'name', $value);
}

# ---- byte strings --------------------------------------------------------------------------

# Configs are bytes. A caller may hand us an upgraded (or even wide-character) string; send its
# bytes, never Perl's internal representation.
sub encode_bytes {
    my ($value) = @_;
    return undef if !defined($value);
    my $copy = "$value";
    utf8::encode($copy) if !utf8::downgrade($copy, 1);
    return encode_base64($copy, '');
}

sub decode_bytes {
    my ($value, $what) = @_;
    return undef if !defined($value);
    die "dirbackupd returned an invalid " . ($what // 'byte string') . "\n"
        if ref($value) || $value !~ m!^[A-Za-z0-9+/=\s]*$!;
    return decode_base64($value);
}

# ---- parameters ------------------------------------------------------------------------------

sub json_bool {
    my ($value) = @_;
    return $value ? JSON::true : JSON::false;
}

# PVE passes numbers as strings more often than not ("100" from a volid or the API); the daemon's
# schema says integer. Anything that is not an integer is sent as it is, for the daemon to refuse.
sub param_int {
    my ($value) = @_;
    return $value if !defined($value) || ref($value);
    return $value =~ m/^\s*(-?\d+)\s*$/ ? 0 + $1 : $value;
}

# A deep copy holding only what JSON can carry. PVE hashes can hold code refs and handles
# (next-dirty-region, file-handle); those stay in this process.
sub plain_data {
    my ($value) = @_;
    my $type = ref($value);
    return $value if $type eq '' || JSON::is_bool($value);
    if ($type eq 'HASH') {
        my %copy;
        for my $key (keys %$value) {
            my $v = $value->{$key};
            next if ref($v) && !_is_data($v);
            $copy{$key} = plain_data($v);
        }
        return \%copy;
    }
    return [map { plain_data($_) } grep { !ref($_) || _is_data($_) } @$value] if $type eq 'ARRAY';
    return undef;
}

sub _is_data {
    my ($v) = @_;
    my $type = ref($v);
    return $type eq 'HASH' || $type eq 'ARRAY' || JSON::is_bool($v);
}

# ---- connection --------------------------------------------------------------------------

sub _connection {
    my ($deadline, $method, $timeout, $inherit) = @_;

    if ($conn && $conn->{pid} != $$) {
        if ($inherit) {
            # The parent waits for us and uses this socket again afterwards: keep its request ids
            # apart from ours so a late reply to one can never be taken for the other's.
            $conn->{pid} = $$;
            $conn->{inherited} = 1;
            $conn->{next_id} = $$ * 1_000_000;
        } else {
            _drop();
        }
    }

    my $path = socket_path();
    _drop() if $conn && $conn->{path} ne $path;

    # A daemon restart or an abandoned call leaves the cached socket at EOF; find out now instead
    # of failing the caller's call.
    _drop() if $conn && !_alive($conn);

    $conn = _connect($path, $deadline, $method, $timeout) if !$conn;
    return $conn;
}

sub _connect {
    my ($path, $deadline, $method, $timeout) = @_;

    my $fh = IO::Socket::UNIX->new(Type => SOCK_STREAM, Blocking => 0)
        or die "unable to create socket for dirbackupd: $!\n";

    my $addr = pack_sockaddr_un($path);
    while (!connect($fh, $addr)) {
        # A full listen backlog (daemon alive but stuck) reports EAGAIN: retry until the deadline.
        if ($! == EAGAIN || $! == EWOULDBLOCK || $! == EINTR || $! == EINPROGRESS) {
            _timed_out($method, $timeout, $fh) if _expired($deadline);
            Time::HiRes::sleep(0.02);
            next;
        }
        close($fh);
        die $NOT_RUNNING;
    }

    my $c = { fh => $fh, path => $path, pid => $$, buf => '', next_id => 1 };

    my $hello_deadline = Time::HiRes::time() + $TIMEOUT{hello};
    my ($d, $t, $m) = ($hello_deadline, $TIMEOUT{hello}, 'hello');
    # The caller's own budget wins when it is shorter (status must answer within one second).
    ($d, $t, $m) = ($deadline, $timeout, $method) if defined($deadline) && $deadline < $hello_deadline;

    # An incompatible daemon answers hello with an error saying what to upgrade: pass it on, and
    # do not keep a connection that refused us.
    eval { _request($c, 'hello', { protocol => $PROTOCOL, client => $CLIENT_NAME }, $d, $t, undef, $m) };
    if (my $err = $@) {
        close($c->{fh});
        die $err;
    }
    return $c;
}

# True when the cached socket has not seen EOF. Bytes waiting here belong to a call that was
# abandoned; they stay in the buffer and are skipped by id.
sub _alive {
    my ($c) = @_;
    while (1) {
        my $n = sysread($c->{fh}, my $chunk, 65536);
        if (!defined($n)) {
            return 1 if $! == EAGAIN || $! == EWOULDBLOCK;
            next if $! == EINTR;
            return 0;
        }
        return 0 if $n == 0;
        $c->{buf} .= $chunk;
        return 0 if length($c->{buf}) > $MAX_REPLY_LINE;
    }
}

# Timeout, lost connection, a signal or a dying log function leave the stream in an unknown state.
# Closing it is also how the daemon learns to cancel the call. A borrowed descriptor (inherit)
# stays open in the parent, so there shutdown() is what tells the daemon; the parent's next call
# then sees EOF and reconnects.
sub _abandon {
    my ($c) = @_;
    $conn = undef if $conn && $conn == $c;
    shutdown($c->{fh}, 2) if $c->{inherited};
    close($c->{fh});
    return;
}

# One line for the task log: PVE prints the die message as it is.
sub _error_message {
    my ($error) = @_;
    my ($msg, $code) = ref($error) eq 'HASH' ? ($error->{message}, $error->{code}) : ();
    if (!defined($msg) || ref($msg) || $msg eq '') {
        $msg = 'dirbackupd failed' . (defined($code) && !ref($code) ? " (error $code)" : '');
    }
    $msg =~ s/[\r\n]+/ /g;
    $msg =~ s/\s+$//;
    return "$msg\n";
}

# Close only our copy of the descriptor, never shutdown(): after a fork the parent still uses
# the same connection.
sub _drop {
    return if !$conn;
    my $fh = $conn->{fh};
    $conn = undef;
    close($fh);
    return;
}

# ---- one request -------------------------------------------------------------------------

sub _request {
    my ($c, $method, $params, $deadline, $timeout, $log, $label) = @_;

    my $id = $c->{next_id}++;
    my $line = $json->encode({ jsonrpc => '2.0', id => $id, method => $method, params => $params // {} })
        . "\n";

    my $reply = eval {
        _write_all($c, $line, $deadline, $label // $method, $timeout);
        _wait_reply($c, $id, $deadline, $label // $method, $timeout, $log);
    };
    if (my $err = $@) {
        _abandon($c);
        die $err;
    }

    if (exists $reply->{error}) {
        die _error_message($reply->{error});
    }
    return $reply->{result};
}

sub _write_all {
    my ($c, $data, $deadline, $method, $timeout) = @_;

    local $SIG{PIPE} = 'IGNORE';
    my $fh = $c->{fh};
    my $sel = IO::Select->new($fh);
    my $off = 0;
    while ($off < length($data)) {
        my $n = send($fh, substr($data, $off), MSG_NOSIGNAL);
        if (defined($n)) {
            $off += $n;
            next;
        }
        _lost($!) if $! == EPIPE || $! == ECONNRESET;
        die "error writing to dirbackupd: $!\n" if $! != EAGAIN && $! != EWOULDBLOCK && $! != EINTR;
        $sel->can_write(_remaining($deadline, $method, $timeout));
    }
    return;
}

sub _wait_reply {
    my ($c, $id, $deadline, $method, $timeout, $log) = @_;

    while (1) {
        while ((my $nl = index($c->{buf}, "\n")) >= 0) {
            my $line = substr($c->{buf}, 0, $nl + 1, '');
            next if $line =~ m/^\s*$/;
            my $msg = eval { $json->decode($line) };
            die "dirbackupd sent a message that is not JSON\n" if !defined($msg) || ref($msg) ne 'HASH';

            if (!defined($msg->{id})) {
                # an error about a line the daemon could not read (it closes the connection next)
                die _error_message($msg->{error}) if exists $msg->{error};
                _notification($msg, $log);
                next;
            }
            # Replies to an abandoned call of ours (or of a process that shared the socket).
            next if "$msg->{id}" ne "$id";
            return $msg;
        }
        die "dirbackupd sent a line longer than 256 MiB\n" if length($c->{buf}) > $MAX_REPLY_LINE;
        _read_some($c, $deadline, $method, $timeout);
    }
}

sub _notification {
    my ($msg, $log) = @_;
    return if !defined($msg->{method}) || $msg->{method} ne 'log';
    return if !$log;
    my $p = ref($msg->{params}) eq 'HASH' ? $msg->{params} : {};
    my $level = $p->{level} // 'info';
    my $text = $p->{message} // '';
    $log->("$level", "$text");
    return;
}

sub _read_some {
    my ($c, $deadline, $method, $timeout) = @_;

    my $fh = $c->{fh};
    my $sel = IO::Select->new($fh);
    while (1) {
        my $wait = _remaining($deadline, $method, $timeout);
        # select() returns early on a signal: its handler ran (and did not die), so wait again.
        next if !$sel->can_read($wait);
        my $n = sysread($fh, my $chunk, 1024 * 1024);
        if (!defined($n)) {
            next if $! == EINTR || $! == EAGAIN || $! == EWOULDBLOCK;
            _lost($!);
        }
        _lost('connection closed') if $n == 0;
        $c->{buf} .= $chunk;
        return;
    }
}

# ---- deadlines and failures ----------------------------------------------------------------

sub _expired {
    my ($deadline) = @_;
    return defined($deadline) && Time::HiRes::time() >= $deadline;
}

# Seconds left for select(); undef waits forever. Dies once the deadline has passed.
sub _remaining {
    my ($deadline, $method, $timeout) = @_;
    return undef if !defined($deadline);
    my $left = $deadline - Time::HiRes::time();
    _timed_out($method, $timeout) if $left <= 0;
    return $left;
}

sub _timed_out {
    my ($method, $timeout, $fh) = @_;
    close($fh) if $fh;
    die "dirbackupd did not answer $method within $timeout s\n";
}

sub _lost {
    my ($why) = @_;
    die "lost connection to dirbackupd: $why\n";
}

sub _invalid {
    my ($what, $value) = @_;
    my $shown = substr("$value", 0, 80);
    $shown =~ s/[^\x20-\x7e]/?/g;
    die "dirbackupd returned an invalid $what: '$shown'\n";
}

1;
