package DirBackupTest::FakeDaemon;

# A scripted stand-in for dirbackupd: a forked process listening on a Unix socket in a temporary
# directory. It records every request line (with the connection number and the peer's pid from
# SO_PEERCRED) and answers what the test's handler says. One process, one thread: enough for
# the shim, which sends one call at a time per connection.
#
#   my $d = DirBackupTest::FakeDaemon->new(handler => sub { my ($req, $conn) = @_; ... });
#   (options: socket => $path to listen on a given path, accept => 0 to listen and never accept)
#   # $ENV{DIRBACKUP_SOCKET} now points at it
#   $d->requests;   # [{ conn, peer_pid, method, params, id }, ...] in arrival order, hello included
#   $d->events;     # [{ event => 'closed', conn }, ...]
#   $d->stop;       # also when it goes out of scope; DIRBACKUP_SOCKET goes back to what it was
#
# The handler returns a list of actions (empty list: the default answer, a hello reply for hello
# and a null result otherwise):
#   [reply => $result]            [error => $code, $message]
#   [log => $level, $message]     [notify => $method, $params]   (a notification without id)
#   [reply_id => $id, $result]    (an answer carrying someone else's id)
#   [raw => $line]                [sleep => $seconds]
#   [hang]                        (never answer this request)
#   [close]                       (close the connection now)
#   [close_on_bytes]              (close the connection as soon as the client sends anything)

use strict;
use warnings;

use File::Temp qw(tempdir);
use IO::Select;
use IO::Socket::UNIX;
use JSON;
use POSIX ();
use Socket qw(SOCK_STREAM SOL_SOCKET SO_PEERCRED);
use Time::HiRes ();

my $json = JSON->new->utf8->canonical->allow_nonref;

sub new {
    my ($class, %opts) = @_;

    my $dir = tempdir('dirbackup-fake-XXXXXX', TMPDIR => 1, CLEANUP => 1);
    ($dir) = $dir =~ m!^(/[\w./\-]+)$! or die "odd tempdir\n";
    my $self = bless {
        dir => $dir,
        socket => $opts{socket} // "$dir/dirbackupd.sock",
        log => "$dir/requests.jsonl",
        owner => $$,
        handler => $opts{handler},
        accept => $opts{accept} // 1,
        previous_socket => $ENV{DIRBACKUP_SOCKET},
    }, $class;

    unlink($self->{socket});
    my $listener = IO::Socket::UNIX->new(Type => SOCK_STREAM, Local => $self->{socket}, Listen => 16)
        or die "fake daemon: cannot listen on $self->{socket}: $!\n";
    open(my $fh, '>', $self->{log}) or die "fake daemon: $!\n";
    close($fh);

    my $pid = fork() // die "fork: $!\n";
    if ($pid == 0) {
        # The test process may hold a client connection to another fake daemon: do not keep a
        # copy of it open here, or that daemon would never see it close.
        PVE::DirBackup::Client::disconnect() if PVE::DirBackup::Client->can('disconnect');
        $SIG{TERM} = sub { POSIX::_exit(0) };
        eval { $self->_serve($listener) };
        print STDERR "fake daemon: $@" if $@;
        POSIX::_exit(0);
    }
    close($listener);
    $self->{pid} = $pid;
    $ENV{DIRBACKUP_SOCKET} = $self->{socket};
    return $self;
}

sub socket { return $_[0]->{socket} }

sub requests {
    my ($self) = @_;
    return [grep { !$_->{event} } @{ $self->_records }];
}

# requests except the hello handshakes
sub calls {
    my ($self) = @_;
    return [grep { $_->{method} ne 'hello' } @{ $self->requests }];
}

sub events {
    my ($self) = @_;
    return [grep { $_->{event} } @{ $self->_records }];
}

# Wait until the daemon has logged an event matching $pred (its writes are asynchronous to ours).
sub wait_for {
    my ($self, $pred, $timeout) = @_;
    my $until = Time::HiRes::time() + ($timeout // 3);
    while (Time::HiRes::time() < $until) {
        return 1 if grep { $pred->($_) } @{ $self->_records };
        Time::HiRes::sleep(0.02);
    }
    return 0;
}

sub stop {
    my ($self) = @_;
    return if !$self->{pid} || $self->{owner} != $$;
    kill('TERM', $self->{pid});
    waitpid($self->{pid}, 0);
    delete $self->{pid};
    unlink($self->{socket});
    # nested daemons: the enclosing test's daemon is the one to talk to again
    if (defined($ENV{DIRBACKUP_SOCKET}) && $ENV{DIRBACKUP_SOCKET} eq $self->{socket}) {
        if (defined($self->{previous_socket})) {
            $ENV{DIRBACKUP_SOCKET} = $self->{previous_socket};
        } else {
            delete $ENV{DIRBACKUP_SOCKET};
        }
    }
    return;
}

sub DESTROY {
    my ($self) = @_;
    local ($?, $!, $@);
    $self->stop;
}

sub _records {
    my ($self) = @_;
    open(my $fh, '<', $self->{log}) or return [];
    my @r;
    while (my $line = <$fh>) {
        chomp $line;
        push @r, $json->decode($line) if length($line);
    }
    close($fh);
    return \@r;
}

# ---- the child -------------------------------------------------------------------------------

sub _record {
    my ($self, $rec) = @_;
    open(my $fh, '>>', $self->{log}) or die "fake daemon: $!\n";
    print $fh $json->encode($rec), "\n";
    close($fh);
    return;
}

sub _serve {
    my ($self, $listener) = @_;

    my $sel = IO::Select->new();
    $sel->add($listener) if $self->{accept};
    my %conns;    # fileno => { fh, n, buf, close_on_bytes, peer_pid }
    my $n = 0;

    while (1) {
        my @ready = $sel->can_read(1) or next;
        for my $fh (@ready) {
            if ($fh == $listener) {
                my $client = $listener->accept or next;
                my $cred = getsockopt($client, SOL_SOCKET, SO_PEERCRED);
                my ($peer_pid) = $cred ? unpack('l', $cred) : (0);
                $conns{ fileno($client) } = { fh => $client, n => ++$n, buf => '', peer_pid => $peer_pid };
                $sel->add($client);
                next;
            }
            my $c = $conns{ fileno($fh) };
            my $got = sysread($fh, my $chunk, 65536);
            if (!$got || $c->{close_on_bytes}) {
                $self->_record({ event => 'closed', conn => $c->{n} });
                $sel->remove($fh);
                delete $conns{ fileno($fh) };
                close($fh);
                next;
            }
            $c->{buf} .= $chunk;
            while ((my $nl = index($c->{buf}, "\n")) >= 0) {
                my $line = substr($c->{buf}, 0, $nl + 1, '');
                my $open = $self->_handle_line($c, $line);
                if (!$open) {
                    $self->_record({ event => 'closed', conn => $c->{n}, by => 'daemon' });
                    $sel->remove($fh);
                    delete $conns{ fileno($fh) };
                    close($fh);
                    last;
                }
            }
        }
    }
}

# Returns false when the connection is to be closed.
sub _handle_line {
    my ($self, $c, $line) = @_;

    my $req = eval { $json->decode($line) } // { invalid => $line };
    $self->_record({
        conn => $c->{n},
        peer_pid => $c->{peer_pid},
        method => $req->{method} // '',
        params => $req->{params},
        id => $req->{id},
    });

    my @actions = $self->{handler} ? $self->{handler}->($req, $c) : ();
    if (!@actions) {
        @actions = $req->{method} && $req->{method} eq 'hello'
            ? ([reply => { protocol => '1.0', daemon => 'fake-dirbackupd' }])
            : ([reply => undef]);
    }

    my $fh = $c->{fh};
    for my $a (@actions) {
        my ($what, @arg) = @$a;
        if ($what eq 'reply') {
            _send($fh, { jsonrpc => '2.0', id => $req->{id}, result => $arg[0] });
        } elsif ($what eq 'reply_id') {
            _send($fh, { jsonrpc => '2.0', id => $arg[0], result => $arg[1] });
        } elsif ($what eq 'error') {
            _send($fh, { jsonrpc => '2.0', id => $req->{id}, error => { code => $arg[0], message => $arg[1] } });
        } elsif ($what eq 'log') {
            _send($fh, { jsonrpc => '2.0', method => 'log', params => { level => $arg[0], message => $arg[1] } });
        } elsif ($what eq 'notify') {
            _send($fh, { jsonrpc => '2.0', method => $arg[0], params => $arg[1] });
        } elsif ($what eq 'raw') {
            syswrite($fh, $arg[0]);
        } elsif ($what eq 'sleep') {
            Time::HiRes::sleep($arg[0]);
        } elsif ($what eq 'hang') {
            return 1;
        } elsif ($what eq 'close') {
            return 0;
        } elsif ($what eq 'close_on_bytes') {
            $c->{close_on_bytes} = 1;
        } else {
            die "unknown fake daemon action '$what'\n";
        }
    }
    return 1;
}

sub _send {
    my ($fh, $msg) = @_;
    local $SIG{PIPE} = 'IGNORE';
    my $data = $json->encode($msg) . "\n";
    while (length($data)) {
        my $n = syswrite($fh, $data);
        return if !defined($n);
        substr($data, 0, $n, '');
    }
    return;
}

1;
