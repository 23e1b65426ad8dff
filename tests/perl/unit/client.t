#!/usr/bin/perl -T

# The JSON-RPC client against a scripted daemon: handshake, errors, deadlines, a daemon that is
# down or hangs, a connection lost mid-call, and processes that fork.

use strict;
use warnings;

use Test::More;

use IO::Socket::UNIX;
use File::Temp qw(tempdir);
use POSIX ();
use Socket qw(SOCK_STREAM);
use Time::HiRes qw(time);

use DirBackupTest::FakeDaemon;
use PVE::DirBackup::Client;
use PVE::Storage::Custom::DirBackupPlugin;

my $plugin = 'PVE::Storage::Custom::DirBackupPlugin';
my $SCFG = { type => 'dirbackup', path => '/tmp/st1' };
my $VOLNAME = 'backup/100/qemu-1700000000';
my $NOT_RUNNING = "dirbackupd is not running (systemctl status dirbackupd)\n";

my ($tmp) = tempdir('dirbackup-client-XXXXXX', TMPDIR => 1, CLEANUP => 1) =~ m!^(/[\w./\-]+)$!;

sub volname_answer {
    return [reply => { vtype => 'backup', name => '100/qemu-1700000000', vmid => 100, format => 'directory' }];
}

subtest 'hello handshake comes first, once per connection' => sub {
    my $d = DirBackupTest::FakeDaemon->new(handler => sub {
        my ($req) = @_;
        return volname_answer() if $req->{method} eq 'parse_volname';
        return;
    });
    $plugin->parse_volname($VOLNAME) for 1 .. 3;
    my $reqs = $d->requests;
    is(scalar(@$reqs), 4, 'one hello and three calls');
    is($reqs->[0]->{method}, 'hello', 'hello first');
    is_deeply($reqs->[0]->{params}, { protocol => '1.0', client => 'pve-dirbackup-shim/0.1' }, 'hello params');
    is(scalar(grep { $_->{conn} == $reqs->[0]->{conn} } @$reqs), 4, 'all on one connection');
};

subtest 'hello refused: die with the daemon message' => sub {
    my $d = DirBackupTest::FakeDaemon->new(handler => sub {
        my ($req) = @_;
        return [error => 1001, "protocol 2.0 required: upgrade pve-dirbackup\n"] if $req->{method} eq 'hello';
        return;
    });
    eval { $plugin->parse_volname($VOLNAME) };
    is($@, "protocol 2.0 required: upgrade pve-dirbackup\n", 'hello error message, one line');
    is(scalar(@{ $d->calls }), 0, 'the call itself was never sent');
};

subtest 'daemon errors die with a one-line message' => sub {
    my $d = DirBackupTest::FakeDaemon->new(handler => sub {
        my ($req) = @_;
        return [error => 1007, "backup 'backup/100/qemu-1700000000' is protected\nsecond line\n"]
            if $req->{method} eq 'free_image';
        return [error => 1016, ''] if $req->{method} eq 'create_base';
        return [raw => qq({"jsonrpc":"2.0","id":null,"error":{"code":-32700,"message":"parse error"}}\n)]
            if $req->{method} eq 'on_delete_hook';
        return;
    });
    eval { $plugin->free_image('st1', $SCFG, $VOLNAME) };
    is($@, "backup 'backup/100/qemu-1700000000' is protected second line\n", 'message joined into one line');
    eval { $plugin->create_base('st1', $SCFG, $VOLNAME) };
    is($@, "dirbackupd failed (error 1016)\n", 'empty message: the code is still reported');
    is(scalar(@{ $d->requests }), 3, 'an error reply keeps the connection (one hello)');
    eval { $plugin->on_delete_hook('st1', $SCFG) };
    is($@, "parse error\n", 'an error without id (the daemon could not read us) ends the call');
};

subtest 'daemon not running: the exact message' => sub {
    local $ENV{DIRBACKUP_SOCKET} = "$tmp/missing.sock";
    eval { $plugin->parse_volname($VOLNAME) };
    is($@, $NOT_RUNNING, 'socket missing (ENOENT)');

    # a socket file nobody listens on any more (ECONNREFUSED)
    my $stale = "$tmp/stale.sock";
    my $l = IO::Socket::UNIX->new(Type => SOCK_STREAM, Local => $stale, Listen => 1) or die $!;
    close($l);
    local $ENV{DIRBACKUP_SOCKET} = $stale;
    eval { $plugin->parse_volname($VOLNAME) };
    is($@, $NOT_RUNNING, 'nobody listening (ECONNREFUSED)');

    # not a socket at all
    my $file = "$tmp/plain-file";
    open(my $fh, '>', $file) or die $!;
    close($fh);
    local $ENV{DIRBACKUP_SOCKET} = $file;
    eval { $plugin->parse_volname($VOLNAME) };
    is($@, $NOT_RUNNING, 'not a socket');
};

subtest 'DIRBACKUP_SOCKET must be a plain absolute path' => sub {
    for my $bad ('relative.sock', '/tmp/../etc/x.sock', "/tmp/a\nb", '/tmp/a b') {
        local $ENV{DIRBACKUP_SOCKET} = $bad;
        eval { $plugin->parse_volname($VOLNAME) };
        is($@, "DIRBACKUP_SOCKET is not a plain absolute path\n", "refused: " . ($bad =~ s/\n/\\n/r));
    }
};

subtest 'log notifications, unknown notifications, foreign ids' => sub {
    my $d = DirBackupTest::FakeDaemon->new(handler => sub {
        my ($req) = @_;
        return if $req->{method} ne 'job_init';
        return (
            [log => info => 'first'],
            [notify => progress => { percent => 10 }],
            [reply_id => 999999, 'not ours'],
            [log => warn => "second\n"],
            [log => err => 'third'],
            [raw => "\n"],
            [reply => undef],
        );
    });
    my @log;
    my $p = $plugin->new_backup_provider($SCFG, 'st1', sub { push @log, [@_] });
    is($p->job_init(1700000000), undef, 'call returns after the notifications');
    is_deeply(\@log, [['info', 'first'], ['warn', "second\n"], ['err', 'third']],
        'log notifications relayed in order with (level, message); others ignored');
};

subtest 'a deadline: die, close the connection, daemon sees the cancel' => sub {
    my $d = DirBackupTest::FakeDaemon->new(handler => sub {
        my ($req) = @_;
        return [hang => 1] if $req->{method} eq 'parse_volname';
        return;
    });
    local $PVE::DirBackup::Client::TIMEOUT{parse_volname} = 0.5;
    my $t0 = time();
    eval { $plugin->parse_volname($VOLNAME) };
    my $took = time() - $t0;
    is($@, "dirbackupd did not answer parse_volname within 0.5 s\n", 'timeout message');
    ok($took >= 0.45 && $took < 1.5, sprintf('gave up after %.2f s', $took));
    ok($d->wait_for(sub { $_[0]->{event} && $_[0]->{event} eq 'closed' }), 'connection closed (daemon cancels)');
};

subtest 'status: inactive within one second, quietly' => sub {
    my @warnings;
    local $SIG{__WARN__} = sub { push @warnings, @_ };

    my $check = sub {
        my ($what) = @_;
        my $t0 = time();
        my @st = $plugin->status('st1', $SCFG, {});
        my $took = time() - $t0;
        is_deeply(\@st, [0, 0, 0, 0], "$what: inactive");
        ok($took < 1.3, sprintf("$what: answered in %.2f s", $took));
    };

    {
        local $ENV{DIRBACKUP_SOCKET} = "$tmp/missing.sock";
        $check->('daemon down');
    }
    {
        my $d = DirBackupTest::FakeDaemon->new(handler => sub { return [hang => 1] });
        $check->('daemon accepts, never answers hello');
    }
    {
        my $d = DirBackupTest::FakeDaemon->new(accept => 0);
        $check->('daemon listens, never accepts');
    }
    {
        my $d = DirBackupTest::FakeDaemon->new(handler => sub {
            my ($req) = @_;
            return [hang => 1] if $req->{method} eq 'status';
            return;
        });
        $check->('daemon answers hello, hangs on status');
    }
    {
        my $d = DirBackupTest::FakeDaemon->new(handler => sub {
            my ($req) = @_;
            return [error => 1006, 'storage path /tmp/st1 is missing'] if $req->{method} eq 'status';
            return;
        });
        $check->('daemon reports the storage unavailable');
    }
    {
        my $d = DirBackupTest::FakeDaemon->new(handler => sub {
            my ($req) = @_;
            return [reply => { total => 10, avail => 4, used => 6, active => JSON::true }] if $req->{method} eq 'status';
            return;
        });
        is_deeply([$plugin->status('st1', $SCFG, {})], [10, 4, 6, 1], 'healthy daemon: real numbers');
    }
    is_deeply(\@warnings, [], 'no warnings');
};

subtest 'SIGPIPE: a daemon that goes away mid-call is a normal die' => sub {
    local $SIG{PIPE} = 'DEFAULT';    # what kills a process that does not protect itself
    {
        my $d = DirBackupTest::FakeDaemon->new(handler => sub {
            my ($req) = @_;
            return [close => 1] if $req->{method} eq 'parse_volname';
            return;
        });
        eval { $plugin->parse_volname($VOLNAME) };
        is($@, "lost connection to dirbackupd: connection closed\n", 'closed while waiting for the reply');
    }
    {
        my $d = DirBackupTest::FakeDaemon->new(handler => sub {
            my ($req) = @_;
            return ([reply => { protocol => '1.0', daemon => 'x' }], [close_on_bytes => 1]) if $req->{method} eq 'hello';
            return;
        });
        # large enough that the daemon closes while we are still writing
        my $big = 'x' x (8 * 1024 * 1024);
        my $p = $plugin->new_backup_provider($SCFG, 'st1', sub { });
        eval { $p->backup_vm(100, $big, {}, {}) };
        like($@, qr/^lost connection to dirbackupd: .+\n\z/, 'write to a closed socket: ' . ($@ =~ s/\n//r));
    }
    pass('process survived');
};

subtest 'a reply line over the limit dies clearly' => sub {
    my $d = DirBackupTest::FakeDaemon->new(handler => sub {
        my ($req) = @_;
        return [raw => ('y' x 5000)] if $req->{method} eq 'parse_volname';
        return;
    });
    local $PVE::DirBackup::Client::MAX_REPLY_LINE = 1024;
    eval { $plugin->parse_volname($VOLNAME) };
    is($@, "dirbackupd sent a line longer than 256 MiB\n", 'refused');
};

subtest 'a daemon restart between calls is transparent' => sub {
    my $handler = sub {
        my ($req) = @_;
        return volname_answer() if $req->{method} eq 'parse_volname';
        return;
    };
    my $d = DirBackupTest::FakeDaemon->new(handler => $handler);
    ok(eval { $plugin->parse_volname($VOLNAME); 1 }, 'call to the first daemon');
    my $socket = $d->socket;
    $d->stop;
    # same socket path; the client still holds the old connection, now at EOF
    my $d2 = DirBackupTest::FakeDaemon->new(handler => $handler, socket => $socket);
    ok(eval { $plugin->parse_volname($VOLNAME); 1 }, 'call after the restart') or diag($@);
    is_deeply([map { $_->{method} } @{ $d2->requests }], ['hello', 'parse_volname'], 'new connection, new hello');
};

subtest 'after fork: the child opens its own connection, the parent keeps its own' => sub {
    my $d = DirBackupTest::FakeDaemon->new(handler => sub {
        my ($req) = @_;
        return volname_answer() if $req->{method} eq 'parse_volname';
        return;
    });
    $plugin->parse_volname($VOLNAME);
    my $pid = fork() // die "fork: $!";
    if ($pid == 0) {
        my $ok = eval { $plugin->parse_volname($VOLNAME); 1 };
        POSIX::_exit($ok ? 0 : 1);
    }
    waitpid($pid, 0);
    is($?, 0, 'child call succeeded');
    ok(eval { $plugin->parse_volname($VOLNAME); 1 }, 'parent call after the child exited') or diag($@);

    my $reqs = $d->requests;
    my @hellos = grep { $_->{method} eq 'hello' } @$reqs;
    is(scalar(@hellos), 2, 'two connections, two hellos');
    my @calls = grep { $_->{method} eq 'parse_volname' } @$reqs;
    is($calls[0]->{conn}, $calls[2]->{conn}, 'parent used the same connection before and after');
    isnt($calls[1]->{conn}, $calls[0]->{conn}, 'child used another connection');
    is($calls[1]->{peer_pid}, $pid, 'opened by the child');
    is($calls[0]->{peer_pid}, $$, 'parent connection opened by the parent');
};

subtest 'backup_container in a forked child borrows the connection of backup_container_prepare' => sub {
    my $d = DirBackupTest::FakeDaemon->new();
    my $p = $plugin->new_backup_provider($SCFG, 'st1', sub { });
    my $info = { directory => '/mnt/vzsnap0', sources => ['./'], 'backup-user-id' => 100000 };
    $p->backup_container_prepare(100, $info);
    my $pid = fork() // die "fork: $!";
    if ($pid == 0) {
        my $ok = eval { $p->backup_container(100, "arch: amd64\n", [], $info); 1 };
        POSIX::_exit($ok ? 0 : 1);
    }
    waitpid($pid, 0);
    is($?, 0, 'child call succeeded');
    ok(eval { $p->backup_cleanup(100, 'lxc', 1, {}); 1 }, 'parent goes on on the same connection') or diag($@);
    my $reqs = $d->requests;
    is(scalar(grep { $_->{method} eq 'hello' } @$reqs), 1, 'one connection');
    my ($prepare, $container, $cleanup) = @{ $d->calls };
    is($container->{method}, 'backup_container', 'child call arrived');
    is($container->{conn}, $prepare->{conn}, 'on the connection the parent opened');
    is($cleanup->{conn}, $prepare->{conn}, 'parent still on it');
    isnt($container->{id}, $prepare->{id} + 1, 'child ids do not collide with the parent');
};

done_testing();
